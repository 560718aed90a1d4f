"""Quality gates: suites derived from the contracts, run through a file-backed GX context."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from atelier.contracts import CUSTOMERS, INTERACTIONS, PRODUCT_IMAGES, PRODUCTS
from atelier.settings import GateSettings, Settings
from expectations.gate import GateResult, build_data_docs, validate_table
from expectations.suites import (
    EARLIEST_TIMESTAMP,
    FUTURE_TOLERANCE,
    MAX_VALUE,
    build_suite,
    reference_check_column,
    with_reference_checks,
)

pytestmark = pytest.mark.data

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
BAND = (1, 1000)
REPO = Path(__file__).resolve().parents[2]


def _ts(*values: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), utc=True)).astype("datetime64[us, UTC]")


def products_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "product_id": ["0108775015", "0108775044", "0110065001"],
            "type": ["Vest top", "Vest top", "Bra"],
            "brand": ["H&M", "H&M", "H&M"],
            "division": ["Ladieswear", None, "Lingeries/Tights"],
            "title": ["Strap top", "Strap top", "OP T-shirt (Idro)"],
            "description": ["Jersey top", None, "Microfibre T-shirt bra"],
            "price": [0.0081, 0.0081, 0.0225],
            "first_seen": _ts("2018-09-20T00:00", "2018-09-20T00:00", "2019-03-01T10:30"),
            "source": ["hm", "hm", "hm"],
        }
    )


def images_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "product_id": ["0108775015", "0108775015", "0108775044"],
            "shot": pd.Series([0, 1, 0], dtype="int32"),
            "path": ["/img/010/0108775015.jpg", "/img/010/0108775015_1.jpg", "/img/0108775044.jpg"],
            "content_hash": ["a" * 64, "b" * 64, "c" * 64],
            "width": pd.Series([1166, 1166, 1166], dtype="int32"),
            "height": pd.Series([1750, 1750, 1750], dtype="int32"),
        }
    )


def interactions_frame(n: int, *, seed: int = 0) -> tuple[pd.DataFrame, dict[str, list]]:
    rng = np.random.default_rng(seed)
    products = [f"{i:010d}" for i in range(n // 3)]
    customers = [f"{i:064x}" for i in range(2 * n // 3)]
    seconds = rng.integers(0, 2 * 365 * 86400, n)
    df = pd.DataFrame(
        {
            "interaction_id": [f"{i:016x}" for i in range(n)],
            "customer_id": rng.choice(customers, n),
            "product_id": rng.choice(products, n),
            "kind": "purchase",
            "timestamp": (
                pd.Timestamp("2018-09-20", tz="UTC") + pd.to_timedelta(seconds, "s")
            ).astype("datetime64[us, UTC]"),
            "price": rng.random(n) * 0.1,
            "channel": rng.choice(["1", "2"], n),
        }
    )
    return df, {"product_id": products, "customer_id": customers}


@pytest.fixture
def gx_settings(tmp_path: Path) -> Settings:
    # Data Docs off for speed; the tests that check them use `docs_settings`.
    return Settings(workdir=tmp_path, gate=GateSettings(build_data_docs=False))


@pytest.fixture
def docs_settings(tmp_path: Path) -> Settings:
    return Settings(workdir=tmp_path)


def gate(settings: Settings, table: str, df, **kwargs) -> GateResult:
    kwargs.setdefault("row_count_band", BAND)
    kwargs.setdefault("now", NOW)
    return validate_table(settings, table, df, **kwargs)


# --- suites ----------------------------------------------------------------------------------


def test_suite_is_derived_from_the_contract_without_a_context():
    suite = build_suite(PRODUCTS, row_count_band=(1, 10), now=NOW)
    assert suite.name == "products"
    got = [(e.expectation_type, e.configuration.kwargs) for e in suite.expectations]
    expected = [
        ("expect_table_row_count_to_be_between", {"min_value": 1, "max_value": 10}),
        *[("expect_column_to_exist", {"column": c}) for c in PRODUCTS.column_names],
        *[
            ("expect_column_values_to_not_be_null", {"column": c})
            for c in ("product_id", "type", "brand", "source")
        ],
        ("expect_column_values_to_be_unique", {"column": "product_id"}),
        (
            "expect_column_values_to_be_between",
            {"column": "price", "min_value": 0, "max_value": MAX_VALUE},
        ),
        (
            "expect_column_values_to_be_between",
            {
                "column": "first_seen",
                "min_value": EARLIEST_TIMESTAMP,
                "max_value": NOW + FUTURE_TOLERANCE,
            },
        ),
    ]
    assert [(t, {k: v for k, v in kw.items() if v is not None}) for t, kw in got] == expected


def test_suite_key_and_references():
    suite = build_suite(
        PRODUCT_IMAGES,
        row_count_band=(0, 5),
        reference_values={"product_id": ["a", "b", "a"]},
        now=NOW,
    )
    by_type = {e.expectation_type: e for e in suite.expectations}
    compound = by_type["expect_compound_columns_to_be_unique"]
    assert compound.configuration.kwargs["column_list"] == ["product_id", "shot"]
    assert "expect_column_values_to_be_unique" not in by_type
    ref = by_type["expect_column_values_to_be_null"]
    assert ref.configuration.kwargs["column"] == "product_id__not_in_products"
    assert ref.meta == {
        "reference": "product_images.product_id -> products.product_id",
        "reference_size": 2,
    }
    # A reference without values is not checked.
    plain = build_suite(INTERACTIONS, row_count_band=(0, 5), now=NOW)
    assert "expect_column_values_to_be_null" not in {e.expectation_type for e in plain.expectations}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"row_count_band": (5, 1)}, "0 <= min <= max"),
        ({"row_count_band": (-1, 1)}, "0 <= min <= max"),
        ({"row_count_band": (0, 1), "now": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"row_count_band": (0, 1), "reference_values": {"brand": ["H&M"]}}, "'brand'"),
    ],
)
def test_suite_rejects_bad_inputs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_suite(PRODUCTS, **kwargs)


def test_reference_checks_mark_missing_values_only():
    df = images_frame()
    df.loc[2, "product_id"] = "0999999999"
    out = with_reference_checks(df, PRODUCT_IMAGES, {"product_id": ["0108775015", "0108775044"]})
    flag = reference_check_column("product_id", "products")
    assert flag not in df.columns  # the input frame is left alone
    assert out[flag].isna().tolist() == [True, True, False]
    assert out[flag].iloc[2] == "0999999999"
    assert with_reference_checks(df, PRODUCT_IMAGES, None) is df


def test_importing_the_package_does_not_import_great_expectations():
    code = (
        "import sys, expectations, expectations.gate, expectations.suites; "
        "assert 'great_expectations' not in sys.modules; assert 'pandas' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --- gate ------------------------------------------------------------------------------------


def test_good_products_pass(gx_settings):
    result = gate(gx_settings, "products", products_frame())
    assert result == GateResult(
        table="products",
        success=True,
        failures=[],
        statistics={
            "evaluated_expectations": 17,
            "successful_expectations": 17,
            "unsuccessful_expectations": 0,
            "success_percent": 100.0,
            "row_count": 3,
        },
        data_docs=None,
    )
    assert result.summary() == "products: gate passed"


def test_duplicate_key_fails_naming_the_key(gx_settings):
    df = products_frame()
    df.loc[2, "product_id"] = "0108775015"
    result = gate(gx_settings, "products", df)
    assert not result.success
    assert result.failures == [
        "products: expect_column_values_to_be_unique(product_id) failed: "
        "2 unexpected values, e.g. ['0108775015']"
    ]
    assert result.statistics["unsuccessful_expectations"] == 1
    assert result.summary() == "products: gate FAILED (1 failures)"


def test_negative_price_fails(gx_settings):
    df = products_frame()
    df.loc[1, "price"] = -0.5
    result = gate(gx_settings, "products", df)
    assert result.failures == [
        "products: expect_column_values_to_be_between(price) failed: "
        "1 unexpected values, e.g. [-0.5] (expected >= 0 and <= 1e+15)"
    ]


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_infinite_price_fails(gx_settings, value):
    df = products_frame()
    df.loc[0, "price"] = value
    result = gate(gx_settings, "products", df)
    assert result.failures == [
        "products: expect_column_values_to_be_between(price) failed: "
        f"1 unexpected values, e.g. [{value!r}] (expected >= 0 and <= 1e+15)"
    ]


def _nan_price_frames():
    prices = pa.array([0.0081, float("nan"), None], type=pa.float64())  # NaN != null here
    arrow_backed = products_frame().assign(price=pd.arrays.ArrowExtensionArray(prices))
    masked = products_frame().assign(
        price=prices.to_pandas(types_mapper={pa.float64(): pd.Float64Dtype()}.get)
    )
    table = pa.Table.from_pandas(products_frame(), preserve_index=False)
    table = table.set_column(table.schema.get_field_index("price"), "price", prices)
    return {"pyarrow.Table": table, "double[pyarrow]": arrow_backed, "Float64": masked}


@pytest.mark.parametrize("kind", ["pyarrow.Table", "double[pyarrow]", "Float64"])
def test_nan_price_fails_where_nan_is_not_null(gx_settings, kind):
    result = gate(gx_settings, "products", _nan_price_frames()[kind])
    assert not result.success
    assert result.failures == [
        "products: expect_column_values_to_be_between(price) failed: "
        "1 unexpected values, e.g. [nan] (expected >= 0 and <= 1e+15)"
    ]


def test_null_price_passes_because_price_is_nullable(gx_settings):
    df = products_frame()
    df.loc[1, "price"] = None
    assert df["price"].dtype == np.float64  # numpy: the null *is* a NaN
    result = gate(gx_settings, "products", df)
    assert result.success, result.failures
    table = pa.Table.from_pandas(df, preserve_index=False)
    assert table.column("price").null_count == 1
    assert gate(gx_settings, "products", table).success


def test_null_in_required_column_fails(gx_settings):
    df = products_frame()
    df.loc[0, "brand"] = None
    result = gate(gx_settings, "products", df)
    assert result.failures == [
        "products: expect_column_values_to_not_be_null(brand) failed: 1 unexpected values"
    ]


def test_missing_column_fails(gx_settings):
    result = gate(gx_settings, "products", products_frame().drop(columns=["source"]))
    assert not result.success
    assert result.failures[0] == (
        "products: expect_column_to_exist(source) failed: column is missing"
    )
    assert len(result.failures) == 2  # the not-null check on it cannot run either
    assert result.failures[1].startswith(
        "products: expect_column_values_to_not_be_null(source) failed: raised "
    )


def test_future_timestamp_fails(gx_settings):
    df = products_frame()
    late = NOW + FUTURE_TOLERANCE + timedelta(seconds=1)
    df.loc[2, "first_seen"] = late
    result = gate(gx_settings, "products", df)
    assert result.failures == [
        "products: expect_column_values_to_be_between(first_seen) failed: "
        "1 unexpected values, e.g. [2026-01-15T12:05:01+00:00] "
        "(expected >= 1990-01-01T00:00:00+00:00 and <= 2026-01-15T12:05:00+00:00)"
    ]
    # Within the clock-skew tolerance is fine.
    df.loc[2, "first_seen"] = NOW + FUTURE_TOLERANCE
    assert gate(gx_settings, "products", df).success


def test_placeholder_dates_fail(gx_settings):
    """The table-level twin of ingest's `implausible_timestamp` row check: same bound."""
    df = products_frame()
    df.loc[1, "first_seen"] = datetime(1900, 1, 1, tzinfo=UTC)
    result = gate(gx_settings, "products", df)
    assert len(result.failures) == 1
    assert "first_seen" in result.failures[0] and "1900-01-01" in result.failures[0]
    df.loc[1, "first_seen"] = EARLIEST_TIMESTAMP
    assert gate(gx_settings, "products", df).success


def test_reference_not_in_set_fails(gx_settings):
    df = images_frame()
    df.loc[2, "product_id"] = "0999999999"
    known = products_frame()["product_id"].tolist()
    result = gate(gx_settings, "product_images", df, reference_values={"product_id": known})
    assert result.failures == [
        "product_images: expect_column_values_to_be_null(product_id__not_in_products) failed: "
        "1 unexpected values, e.g. ['0999999999'] (missing from products.product_id)"
    ]
    # Without reference values the reference is not checked.
    assert gate(gx_settings, "product_images", df).success


def test_references_of_interactions(gx_settings):
    df, refs = interactions_frame(300)
    assert gate(gx_settings, "interactions", df, reference_values=refs).success
    df.loc[[5, 6], "customer_id"] = "unknown"
    result = gate(gx_settings, "interactions", df, reference_values=refs)
    assert result.failures == [
        "interactions: expect_column_values_to_be_null(customer_id__not_in_customers) failed: "
        "2 unexpected values, e.g. ['unknown'] (missing from customers.customer_id)"
    ]


@pytest.mark.parametrize(("band", "rows"), [((4, 10), 3), ((1, 2), 3)])
def test_row_count_outside_band_fails(gx_settings, band, rows):
    result = gate(gx_settings, "products", products_frame(), row_count_band=band)
    assert result.failures == [
        f"products: expect_table_row_count_to_be_between() failed: {rows} rows, "
        f"expected between {band[0]} and {band[1]}"
    ]
    assert result.statistics["row_count"] == rows


def test_compound_key_of_product_images(gx_settings):
    df = images_frame()
    # Same product, different shots: a valid compound key.
    assert gate(gx_settings, "product_images", df).success
    df.loc[1, "shot"] = 0
    result = gate(gx_settings, "product_images", df)
    assert result.failures == [
        "product_images: expect_compound_columns_to_be_unique(product_id, shot) failed: "
        "2 unexpected values, e.g. [{product_id: '0108775015', shot: 0}]"
    ]


def test_negative_age_fails_and_null_age_passes(gx_settings):
    df = pd.DataFrame(
        {
            "customer_id": ["c1", "c2", "c3"],
            "age": pd.array([24, None, -3], dtype="Int32"),
            "club_member_status": ["ACTIVE", None, "ACTIVE"],
            "fashion_news_frequency": [None, None, "Regularly"],
            "postal_code": ["52043ee2", None, "2973abc5"],
        }
    )
    result = gate(gx_settings, "customers", df)
    assert CUSTOMERS.non_negative == ("age",)
    assert result.failures == [
        "customers: expect_column_values_to_be_between(age) failed: "
        "1 unexpected values, e.g. [-3] (expected >= 0 and <= 1e+15)"
    ]


def test_data_docs_are_built_under_gx_dir(docs_settings):
    result = gate(docs_settings, "products", products_frame())
    index = docs_settings.gx_dir / "uncommitted" / "data_docs" / "local_site" / "index.html"
    assert result.data_docs == index
    assert index.is_file()
    html = index.read_text()
    assert "products" in html
    site = index.parent
    assert (site / "expectations" / "products.html").is_file()
    assert len(list((site / "validations" / "products").rglob("*.html"))) == 1
    # The helper rebuilds the whole site from the stored results.
    shutil.rmtree(site)
    assert build_data_docs(docs_settings) == index
    assert (site / "expectations" / "products.html").is_file()


def test_running_twice_in_the_same_workdir(docs_settings):
    df = products_frame()
    first = gate(docs_settings, "products", df)
    bad = df.assign(price=[1.0, -1.0, 2.0])
    second = gate(docs_settings, "products", bad, row_count_band=(1, 5))
    images = gate(docs_settings, "product_images", images_frame())
    third = gate(docs_settings, "products", df)
    assert (first.success, second.success, images.success, third.success) == (
        True,
        False,
        True,
        True,
    )
    assert third == first
    gx_dir = docs_settings.gx_dir
    assert sorted(p.name for p in (gx_dir / "expectations").glob("*.json")) == [
        "product_images.json",
        "products.json",
    ]
    assert sorted(p.name for p in (gx_dir / "checkpoints").glob("*.json")) == [
        "product_images.json",
        "products.json",
    ]
    # The suite on disk is the latest one (band of the last run), not an accumulation.
    stored = json.loads((gx_dir / "expectations" / "products.json").read_text())
    assert len(stored["expectations"]) == 17
    row_count = [e for e in stored["expectations"] if "row_count" in e["type"]]
    assert [e["kwargs"]["max_value"] for e in row_count] == [BAND[1]]
    # One pandas data source, one asset per table, one batch definition each.
    config = (gx_dir / "great_expectations.yml").read_text()
    assert config.count("type: pandas") == 1
    assert config.count("whole:") == 2
    runs = list(
        (gx_dir / "uncommitted" / "data_docs" / "local_site" / "validations").rglob("*.html")
    )
    assert len(runs) == 4


def test_thirty_thousand_interactions(gx_settings):
    df, refs = interactions_frame(30_000)
    gate(gx_settings, "interactions", df.head(10), reference_values=refs)  # warm the context
    result = gate(gx_settings, "interactions", df, row_count_band=(1, 10**6), reference_values=refs)
    assert result.success, result.failures
    assert result.statistics["row_count"] == 30_000
    assert result.statistics["evaluated_expectations"] == 18


# --- Spark -----------------------------------------------------------------------------------


@pytest.mark.spark
def test_spark_dataframe(gx_settings, spark):
    cached = len(spark.sparkContext._jsc.getPersistentRDDs())
    rows = images_frame()
    rows.loc[1, "shot"] = 0  # duplicate compound key
    rows.loc[2, "product_id"] = "0999999999"  # unknown product
    sdf = spark.createDataFrame(
        list(rows.itertuples(index=False, name=None)), PRODUCT_IMAGES.spark_ddl()
    )
    result = gate(
        gx_settings, "product_images", sdf, reference_values={"product_id": ["0108775015"]}
    )
    assert result.failures == [
        "product_images: expect_compound_columns_to_be_unique(product_id, shot) failed: "
        "2 unexpected values, e.g. [{product_id: '0108775015', shot: 0}]",
        "product_images: expect_column_values_to_be_null(product_id__not_in_products) failed: "
        "1 unexpected values, e.g. ['0999999999'] (missing from products.product_id)",
    ]
    assert result.statistics["row_count"] == 3
    assert len(spark.sparkContext._jsc.getPersistentRDDs()) == cached  # nothing left cached

    # Spark keeps NaN apart from null: NaN fails the bounds, null passes.
    prices = spark.createDataFrame(
        [
            (pid, "t", "b", None, None, None, price, NOW - timedelta(days=1), "hm")
            for pid, price in (("1", float("nan")), ("2", None), ("3", 1.5))
        ],
        PRODUCTS.spark_ddl(),
    )
    result = gate(gx_settings, "products", prices)
    assert len(result.failures) == 1
    assert result.failures[0].startswith(
        "products: expect_column_values_to_be_between(price) failed: 1 unexpected values"
    )
