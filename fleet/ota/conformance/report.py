"""The kit's results: one PASS/FAIL/SKIP line per check, JUnit XML and JSON reports."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Outcome = Literal["PASS", "FAIL", "SKIP"]


@dataclass(frozen=True)
class Result:
    """One check's outcome; ``detail`` says what passed or why it failed or was skipped."""

    name: str
    outcome: Outcome
    detail: str
    seconds: float
    waited_for: str


def line(result: Result) -> str:
    """The line printed for ``result``."""
    return f"{result.outcome}  {result.name:<27} {result.seconds:6.2f} s  {result.detail}"


def summary(results: list[Result]) -> str:
    passed = sum(r.outcome == "PASS" for r in results)
    failed = sum(r.outcome == "FAIL" for r in results)
    skipped = sum(r.outcome == "SKIP" for r in results)
    verdict = "CONFORMS" if passed == len(results) and results else "DOES NOT CONFORM"
    return f"{verdict}: {passed} passed, {failed} failed, {skipped} skipped"


def write_report(path: Path, results: list[Result], *, device_id: str) -> None:
    """JUnit XML when ``path`` ends in ``.xml``, else JSON."""
    path = Path(path)
    if path.suffix == ".xml":
        suite = ET.Element(
            "testsuite",
            name="fedfleet-device-conformance",
            tests=str(len(results)),
            failures=str(sum(r.outcome == "FAIL" for r in results)),
            skipped=str(sum(r.outcome == "SKIP" for r in results)),
            time=f"{sum(r.seconds for r in results):.3f}",
        )
        for result in results:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"conformance.{device_id}",
                name=result.name,
                time=f"{result.seconds:.3f}",
            )
            if result.outcome == "FAIL":
                ET.SubElement(case, "failure", message=result.detail).text = result.detail
            elif result.outcome == "SKIP":
                ET.SubElement(case, "skipped", message=result.detail)
            else:
                ET.SubElement(case, "system-out").text = result.detail
        ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
        return
    document = {
        "device_id": device_id,
        "conforms": bool(results) and all(r.outcome == "PASS" for r in results),
        "checks": [asdict(r) for r in results],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
