"""Prints a YAML file as JSON, read with PyYAML's safe loader.

Usage: yaml_to_json.py FILE. For the Rust tests that read deploy/prometheus's YAML (the
workspace has no YAML crate); Prometheus itself validates the files with promtool.
"""
import json
import sys

import yaml


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} FILE")
    with open(sys.argv[1], encoding="utf-8") as file:
        json.dump(yaml.safe_load(file), sys.stdout)


if __name__ == "__main__":
    main()
