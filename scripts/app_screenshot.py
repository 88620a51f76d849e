"""Drive `synseg app` in a real headless browser: load the page, generate a scene, segment it, save a screenshot.

    python scripts/app_screenshot.py --out app.png [--browser /usr/bin/chromium] [-- extra `synseg app` arguments]
    python scripts/app_screenshot.py --out app.png --url http://127.0.0.1:7860   # a page already running

Needs playwright (pip install 'synseg[browser]') and a Chromium: Debian's (apt install chromium) is used as it is, so
nothing is downloaded. Exits non-zero if the page does not show an overlay within the timeout.
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"synseg app exited with status {server.returncode} before serving")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"synseg app did not answer at {url} within {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="app.png", help="screenshot file (default app.png)")
    parser.add_argument("--browser", default="/usr/bin/chromium", help="Chromium executable (default: Debian's)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds for the server and the segmentation")
    parser.add_argument("--url", help="use the page already served there instead of starting `synseg app`")
    parser.add_argument("app_args", nargs="*", help="arguments passed to `synseg app` (after --)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    server = None
    if args.url:
        url = args.url
    else:
        url = f"http://127.0.0.1:{free_port()}"
        server = subprocess.Popen([sys.executable, "-m", "synseg.cli", "app", "--port", url.rsplit(":", 1)[1],
                                   *args.app_args])
    try:
        if server is not None:
            wait_for(url, server, args.timeout)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.browser, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(args.timeout * 1000)
            page.goto(url)
            page.get_by_role("button", name="segment", exact=True).wait_for()  # the page has rendered
            if page.get_by_role("button", name="new generated scene").count():
                page.get_by_role("button", name="new generated scene").click()
            else:  # a real checkpoint: the example photo
                page.locator(".gallery-item, [data-testid='examples'] button, table.gr-samples-table tr").first.click()
            page.wait_for_function("() => document.querySelectorAll('img').length > 0")  # the image is in
            page.get_by_role("button", name="segment", exact=True).click()
            # The download list shows the label map's name once the segmentation has come back.
            page.get_by_text("label_map.png").first.wait_for()
            page.wait_for_timeout(2000)  # images finish loading
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
