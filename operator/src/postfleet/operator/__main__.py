"""python -m postfleet.operator: the operator role. Its command line is read
here, before kopf is imported, so --postconf answers without it."""

import argparse
import os

from postfleet.core.postconf import role_entry
from postfleet.core.settings import CONFIG_ENV

parser = argparse.ArgumentParser(prog="postfleet-operator",
                                 description="The postfleet operator (kopf).")
parser.add_argument("--config", help="postfleet YAML file (default: $POSTFLEET_CONFIG)")
parser.add_argument("--postconf", action="store_true",
                    help="print the parameters (JSON: value, default, set) and exit")
args = parser.parse_args()
if args.config:
    os.environ[CONFIG_ENV] = args.config
# kopf talks to Kubernetes with aiohttp: nothing is marked unused here.
role_entry("postfleet.operator.settings:OperatorSettings", "postfleet.operator.main:main",
           unused_imports=())
