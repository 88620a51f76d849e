"""Drive `synseg app` in a real headless browser: load the page, pick an image, segment it, save a screenshot.

    python scripts/app_screenshot.py --out app.png [--browser /usr/bin/chromium] [-- extra `synseg app` arguments]
    python scripts/app_screenshot.py --out app.png --url http://127.0.0.1:7860   # a page already running

With no checkpoint the page offers generated scenes, and the script segments a new one; with one, it picks the page's
example photo. Needs playwright (pip install 'synseg[browser]') and a Chromium: Debian's (apt install chromium) is
used as it is, so no browser is downloaded. Exits non-zero with the reason if the page shows an error, no overlay
comes back within the timeout, or the overlay has no legend beside the image.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

IMAGE, OVERLAY = "#synseg-image img[src*='/file=']", "#synseg-overlay img[src*='/file=']"  # elem_ids set in synseg.app
SIZE = "(selector) => { const img = document.querySelector(selector); return img.complete && [img.naturalWidth, img.naturalHeight] }"


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


def screenshot(url: str, browser_path: str, out: Path, timeout: float) -> tuple[list[int], list[int]]:
    """Segment one image on the page at `url`; the screenshot goes to `out` even when the page shows an error.
    Returns the (width, height) of the input image and of the overlay the page received."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(timeout * 1000)
            page.goto(url)
            segment = page.locator("#synseg-segment")
            segment.wait_for()
            if page.locator("#synseg-scene").count():
                page.locator("#synseg-scene").click()
            else:  # a checkpoint of the user's: the page's example photo
                page.locator("#synseg-examples button, #synseg-examples tr").first.click()
            page.locator(IMAGE).wait_for()
            page.wait_for_function(SIZE, arg=IMAGE)
            segment.click()
            error = page.get_by_test_id("toast-body")
            page.locator(OVERLAY).or_(error).first.wait_for()
            if error.count():
                page.screenshot(path=str(out), full_page=True)
                raise SystemExit(f"the page showed an error: {' '.join(error.first.inner_text().split())}")
            page.wait_for_function(SIZE, arg=OVERLAY)
            page.wait_for_function("() => [...document.images].every(img => img.complete)")  # heat maps too
            page.screenshot(path=str(out), full_page=True)
            return page.evaluate(SIZE, IMAGE), page.evaluate(SIZE, OVERLAY)
        finally:
            browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("app.png"), help="screenshot file (default app.png)")
    parser.add_argument("--browser", default="/usr/bin/chromium", help="Chromium executable (default: Debian's)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds for the server and for each page step")
    parser.add_argument("--url", help="use the page already served there instead of starting `synseg app`")
    parser.add_argument("app_args", nargs="*", help="arguments passed to `synseg app` (after --)")
    args = parser.parse_args()
    try:
        import playwright  # noqa: F401
    except ImportError:
        raise SystemExit("needs playwright: pip install 'synseg[browser]'") from None
    if not os.access(args.browser, os.X_OK):
        raise SystemExit(f"no Chromium at {args.browser}: apt install chromium, or pass --browser")

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
        args.out.parent.mkdir(parents=True, exist_ok=True)
        image, shown = screenshot(url, args.browser, args.out, args.timeout)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    from synseg.render import enlargement

    picture = [side * enlargement(*image) for side in image]  # the image as the overlay shows it
    if shown[0] <= picture[0] or shown[1] < picture[1]:
        raise SystemExit(f"the overlay ({shown[0]}x{shown[1]}) has no legend beside the image ({picture[0]}x{picture[1]})")
    print(f"wrote {args.out}: a {image[0]}x{image[1]} image segmented, overlay with its legend {shown[0]}x{shown[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
