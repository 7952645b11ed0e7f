"""What the campaign did, as a fingerprint: ``.venv/bin/python tools/campaign_fingerprint.py [steps]``.

Prints, per era and seed (the derandomised sequence, seeds 1 and 2), what the campaign did (steps, checked calls,
runs, whether it failed) and a hash of every host call with its result, then a rough rate (checked calls per CPU
second).  A change meant to make the campaign faster must leave every line but the rate identical: run it on the
code before the change and after, and compare (``cut -c1-80`` drops the rate).
"""

import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pkvmlab import Lab, campaign  # noqa: E402
from pkvmlab.firmware import load_firmware  # noqa: E402
from pkvmlab.firmware.build import MAINLINE_DIR  # noqa: E402


def main(steps: int) -> None:
    for era in ("seed", "mainline"):
        fw = load_firmware(MAINLINE_DIR if era == "mainline" else None)
        for seed in (None, 1, 2):
            logs = []

            def make(fw=fw, era=era, logs=logs):
                lab = Lab(firmware=fw, era=era)
                logs.append(lab.host.log)   # the list, not the lab: kept alive without keeping the engine
                return lab

            t = time.process_time()
            r = campaign.run(make, steps=steps, shrink=False, seed=seed)
            cpu = time.process_time() - t
            h = hashlib.sha256(repr(logs).encode()).hexdigest()[:16]
            print(f"{era:8} seed={seed!s:4} steps={r.steps} calls={r.calls} runs={r.examples} caught={r.caught} "
                  f"log={h}   ({r.calls / cpu:.0f} checked calls per CPU second)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400)
