"""The viewer in a real browser: headless Chromium driven by Selenium, for the browser test and the docs picture.

    python -m nerf_mapping.viewer.browser --checkpoint MAP.pt --output docs/results/viewer.png [--query sofa]
                                          [--mesh] [--params mapper.yaml]

opens ``MAP`` as ``nerf-mapping view`` does, optionally runs a query and exports a mesh through the viewer's own
handlers, opens the viewer in headless Chromium, waits for a refined render of the browser's camera and saves a
screenshot.

The browser is Debian's ``chromium`` with its ``chromedriver`` (``scripts/test.sh`` installs them); both paths are
given to Selenium explicitly, so its selenium-manager never looks for (or downloads) a driver. WebGL runs on
SwiftShader (software), which headless Chromium needs without a GPU.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

CHROME_ARGS = ("--headless=new", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox",
               "--disable-dev-shm-usage", "--disable-gpu-sandbox", "--mute-audio", "--no-first-run")


def find_browser() -> tuple[str, str] | str:
    """(chromium, chromedriver) executables, or the reason why there are none."""
    import importlib.util

    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install selenium)"
    chrome = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                   if p and os.path.exists(p)), None)
    driver = next((p for p in ("/usr/bin/chromedriver", shutil.which("chromedriver")) if p and os.path.exists(p)), None)
    if chrome is None or driver is None:
        return ("no " + " and no ".join(n for n, p in (("chromium", chrome), ("chromedriver", driver)) if p is None)
                + " (apt-get install chromium chromium-driver; scripts/test.sh does)")
    return chrome, driver


def headless_chromium(width: int = 1280, height: int = 800):
    """A headless Chromium WebDriver with a ``width`` x ``height`` window; RuntimeError naming what is missing."""
    found = find_browser()
    if isinstance(found, str):
        raise RuntimeError(found)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chrome, driver = found
    opts = webdriver.ChromeOptions()
    for a in (*CHROME_ARGS, f"--window-size={width},{height}"):
        opts.add_argument(a)
    opts.binary_location = chrome  # with the driver's path below: selenium-manager is never run
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def screenshot_png(driver):
    """The page as a numpy uint8 [H,W,3]."""
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"))


def close_notifications(driver) -> None:
    """Close the page's notifications (headless Chromium gets "Software WebGL rendering detected")."""
    from selenium.webdriver.common.by import By

    for b in driver.find_elements(By.CSS_SELECTOR, ".mantine-Notification-closeButton, "
                                                   "button.mantine-CloseButton-root"):
        try:
            b.click()
        except Exception:  # noqa: BLE001 - gone meanwhile, or not clickable: the picture keeps it
            pass


def wait_for(cond, timeout: float, period: float = 0.05) -> bool:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if cond():
            return True
        time.sleep(period)
    return bool(cond())


def wait_for_refined(viewer, timeout: float = 60.0) -> bool:
    """Until a browser got a refined (or refresh) render of its camera."""
    return wait_for(lambda: any(v.frames and v.done_quality == "refined" and v.done_seq == v.seq
                                for v in list(viewer._views.values())), timeout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nerf_mapping.viewer.browser", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--output", required=True, type=Path, help="screenshot (.png)")
    ap.add_argument("--params", type=Path, default=None, help="node parameters file (default as nerf-mapping view)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--query", default="", help="run this query first (its cloud is in the picture)")
    ap.add_argument("--mesh", action="store_true", help="export a mesh first (shown in the picture)")
    ap.add_argument("--hide", nargs="*", default=[], help="layers to switch off: keyframes paths current mesh query")
    ap.add_argument("--size", type=int, nargs=2, default=(1280, 800), metavar=("W", "H"))
    args = ap.parse_args(argv)

    from nerf_mapping.cli.view import configs, find_params, open_map
    from nerf_mapping.viewer.viewer import Viewer

    params = args.params if args.params is not None else find_params(args.checkpoint)
    cfg, vcfg = configs(params, args.set)
    vcfg.port = 0
    mapper = open_map(args.checkpoint, cfg)
    out_dir = args.output.parent / "viewer_outputs"
    viewer = Viewer(mapper, vcfg, output_dir=out_dir, label=f"nerf_mapping: {args.checkpoint.name}")
    driver = None
    try:
        url = viewer.start()
        if args.query:
            wait_for(lambda: mapper.semantics.ready.is_set(), 60)
            wait_for(lambda: mapper.semantics._field_of is mapper.trainer, 60)
            print(viewer.run_query(args.query))
        if args.mesh:
            print(viewer.export_mesh())
        for layer in args.hide:
            viewer.gui[f"show_{layer}"].value = False
            viewer._toggle(f"show_{layer}", {"paths": ("path_odom", "path_refined")}.get(layer, (layer,)))
        driver = headless_chromium(*args.size)
        driver.get(url)
        if not wait_for_refined(viewer, 120):
            print("error: no refined render reached the browser", file=sys.stderr)
            return 1
        close_notifications(driver)
        time.sleep(2.0)  # the browser draws the last image and the scene
        args.output.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.output))
        print(f"screenshot: {args.output} ({url}; {viewer.stats()})")
    finally:
        if driver is not None:
            driver.quit()
        viewer.stop()
        mapper.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
