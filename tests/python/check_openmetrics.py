"""Parses an OpenMetrics exposition from stdin with prometheus_client's reference parser.

Prints one JSON object: the families' names and types, and every exemplar as
{"sample": name, "labels": {...}, "exemplar": {...}}. Exits non-zero, with the parser's
message, if the text is not valid OpenMetrics.
"""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main() -> None:
    text = sys.stdin.read()
    families = {}
    exemplars = []
    try:
        for family in text_string_to_metric_families(text):
            families[family.name] = family.type
            for sample in family.samples:
                if sample.exemplar is not None:
                    exemplars.append(
                        {
                            "sample": sample.name,
                            "labels": sample.labels,
                            "exemplar": sample.exemplar.labels,
                        }
                    )
    except Exception as error:  # the parser raises ValueError and friends
        print(f"invalid OpenMetrics: {error}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"families": families, "exemplars": exemplars}))


if __name__ == "__main__":
    main()
