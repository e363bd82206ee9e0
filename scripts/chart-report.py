"""Renders the chart with the defaults and every charts/sidecar/ci/*.yaml values file and prints,
per file, how many manifests came out, of which kinds, and whether each validated (strict
Kubernetes schemas of 1.29 and the newest known version; hand-written subsets for CRDs).

    .venv/bin/python scripts/chart-report.py
"""

import collections
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import test_chart  # noqa: E402  (the test module's render and validation, so the figures are the tested ones)


def main() -> int:
    print(f"helm: {test_chart.helm('version', '--short').stdout.strip()}; "
          f"Kubernetes schemas: {', '.join(test_chart.K8S_VERSIONS)} (strict)")
    failures = 0
    for values in test_chart.VALUES_FILES:
        docs = test_chart.render(values)
        kinds = collections.Counter(d["kind"] for d in docs)
        results = []
        for d in docs:
            try:
                results.append(test_chart.validate_manifest(d))
            except Exception as e:  # report, keep going
                failures += 1
                results.append(f"INVALID {d['kind']}/{d['metadata'].get('name')}: {str(e).splitlines()[0]}")
        bad = [r for r in results if r.startswith("INVALID")]
        crd = sum(r == "crd-subset" for r in results)
        verdict = "all valid" if not bad else "; ".join(bad)
        print(f"{values:<34} {len(docs):>2} manifests ({crd} CRD) {verdict}")
        print(f"{'':<34}    {', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
