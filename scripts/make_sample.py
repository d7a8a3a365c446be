"""Regenerates chatdf/sample/sample.parquet: 2025 monthly sales by region and product."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import polars as pl

TARGET = Path(__file__).resolve().parent.parent / "chatdf" / "sample" / "sample.parquet"
REGIONS = {"North": 1.15, "South": 0.9, "East": 1.05, "West": 1.0}
PRODUCTS = {  # product: (category, unit price, base monthly units)
    "Laptop": ("Electronics", 1199.0, 40),
    "Headphones": ("Electronics", 149.0, 180),
    "Desk Chair": ("Furniture", 329.0, 55),
    "Standing Desk": ("Furniture", 649.0, 25),
    "Coffee Beans": ("Groceries", 18.5, 600),
    "Green Tea": ("Groceries", 9.75, 420),
}
# Retail seasonality: a quiet start, a summer bump, a strong November-December.
SEASON = [0.85, 0.8, 0.95, 1.0, 1.05, 1.1, 1.15, 1.05, 1.0, 1.05, 1.3, 1.55]


def build_sales() -> pl.DataFrame:
    """288 rows (12 months x 4 regions x 6 products), the same on every run."""
    rng = random.Random(20250101)
    rows = []
    for month_index, season in enumerate(SEASON):
        month = dt.date(2025, month_index + 1, 1)
        for region, regional in REGIONS.items():
            for product, (category, price, base_units) in PRODUCTS.items():
                units = round(base_units * season * regional * rng.uniform(0.85, 1.15))
                discount = rng.choice([0.0, 0.0, 0.0, 0.05, 0.1])
                revenue = round(units * price * (1 - discount), 2)
                rows.append((month, region, product, category, units, price, discount, revenue))
    return pl.DataFrame(
        rows,
        schema={
            "month": pl.Date,
            "region": pl.String,
            "product": pl.String,
            "category": pl.String,
            "units_sold": pl.Int64,
            "unit_price": pl.Float64,
            "discount": pl.Float64,
            "revenue": pl.Float64,
        },
        orient="row",
    )


def main() -> None:
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    frame = build_sales()
    frame.write_parquet(TARGET, compression="zstd", statistics=True)
    print(f"wrote {TARGET} ({frame.height} rows, {TARGET.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
