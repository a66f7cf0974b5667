#!/usr/bin/env bash
# Regenerate docs/cli.md from the CLI itself (tests/cli/test_cli_docs.py checks it is current).
set -euo pipefail
cd "$(dirname "$0")/.."
{
  cat docs/cli.header.md
  .venv/bin/typer wanspec.cli.app utils docs --name wanspec | sed 's/^# `wanspec`$/## `wanspec`/; s/^## `wanspec /### `wanspec /'
} > docs/cli.md
