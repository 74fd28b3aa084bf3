"""Parses a metrics exposition from stdin with prometheus_client's reference parsers.

Usage: parse_exposition.py openmetrics|text
  openmetrics: OpenMetrics 1.0.0 (prometheus_client.openmetrics.parser, which is strict);
  text:        the Prometheus text format 0.0.4 (prometheus_client.parser).

Prints one JSON object: the families' names and types, every sample as
{"name": ..., "labels": {...}}, and every exemplar as {"sample": name, "labels": {...},
"exemplar": {...}}. Exits non-zero, with the parser's message, if the text does not parse.
"""
import json
import sys

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

PARSERS = {"openmetrics": parse_openmetrics, "text": parse_text}


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in PARSERS:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(PARSERS)}")
    text = sys.stdin.read()
    families = {}
    samples = []
    exemplars = []
    try:
        for family in PARSERS[sys.argv[1]](text):
            families[family.name] = family.type
            for sample in family.samples:
                samples.append({"name": sample.name, "labels": sample.labels})
                if sample.exemplar is not None:
                    exemplars.append(
                        {
                            "sample": sample.name,
                            "labels": sample.labels,
                            "exemplar": sample.exemplar.labels,
                        }
                    )
    except Exception as error:  # the parsers raise ValueError and friends
        print(f"invalid {sys.argv[1]} exposition: {error}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"families": families, "samples": samples, "exemplars": exemplars}))


if __name__ == "__main__":
    main()
