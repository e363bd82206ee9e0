#!/usr/bin/env python3
"""Rewrite the chart's list of sidecar settings (values.schema.json) from sidecar/config.py.

Run after adding or renaming an option; tests/test_chart.py fails until the two agree."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sidecar import config  # noqa: E402
from sidecar.inject import spec  # noqa: E402

path = ROOT / "charts" / "sidecar" / "values.schema.json"
schema = json.loads(path.read_text())
names = [n for n in config.option_names() if n not in spec.OWNED_SETTINGS]
schema["properties"]["sidecar"]["properties"]["settings"]["propertyNames"]["enum"] = names
path.write_text(json.dumps(schema, indent=2) + "\n")
print(f"{path.relative_to(ROOT)}: {len(names)} settings")
