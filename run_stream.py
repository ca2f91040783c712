#!/usr/bin/env python3
"""Entry point: python run_stream.py <command> ...  (see --help)."""
import sys

from stream.cli import main

if __name__ == "__main__":
    sys.exit(main())
