"""Print a server's address and a request to try once it answers: `lora-study serve`'s helper.

    python -m lora_study.ready URL SERVER_PID TEXT

Returns at once and waits in the background (a detached process that imports only the standard
library), so `lora-study serve` can become the server itself. Gives up silently when the server
process ends first, or after READY_TIMEOUT_S.
"""

import os
import sys
import time
import urllib.request

READY_TIMEOUT_S = 900  # a hub base model may download first


def wait_and_print(url: str, server_pid: int, text: str) -> None:
    started = time.time()
    while time.time() - started < READY_TIMEOUT_S:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            return
        try:
            urllib.request.urlopen(f"{url}/ping", timeout=2)
        except OSError:
            time.sleep(0.5)
            continue
        print(f"Ready in {time.time() - started:.0f} s.\n{text}", flush=True)
        return


if __name__ == "__main__":
    if os.fork() == 0:  # detach: the caller waits for this first process only
        os.setsid()
        wait_and_print(sys.argv[1], int(sys.argv[2]), sys.argv[3])
    os._exit(0)
