"""Jinja2 templates and CSS of the web gallery (`serving.gallery`), shipped as package data."""
