"""Great Expectations quality gates derived from the table contracts.

`expectations.suites.build_suite` turns an `atelier.contracts.TableContract` into an
`ExpectationSuite`; `expectations.gate.validate_table` runs it against a pandas or Spark
DataFrame through a file-backed GX context under `settings.gx_dir` and returns a `GateResult`.

Importing this package is cheap: great_expectations (several seconds to import) is only
imported inside the functions that need it.
"""
