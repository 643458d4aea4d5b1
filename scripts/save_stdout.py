"""Run a command, echo its stdout and also save it to a file (weasel runs commands without a shell,
so project.yml cannot use `>`).

    python scripts/save_stdout.py OUT_FILE python -m spacy_segment_influence explain ...

A leading `python`/`python3` runs with this interpreter. The file is only written when the command
succeeds, so a failed step leaves no output behind for the next run to mistake for a result.
"""

import subprocess
import sys
from pathlib import Path


def main(argv) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_path, command = Path(argv[0]), list(argv[1:])
    if command[0] in ("python", "python3"):
        command[0] = sys.executable
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(result.stdout)
    if result.returncode != 0:
        return result.returncode
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(result.stdout, encoding="utf8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
