"""The viewer in a real browser: headless Chromium (Debian's chromium + chromedriver, WebGL on SwiftShader) opens the
viewer of a small map, the scene arrives, a screenshot shows the map's render (not a blank canvas), and a query
typed into the page's text box returns a cloud (server side: the viewer's last query and the scene's ``/query``
node; browser side: the node listed in the page's scene tree). Skipped with the reason when chromium,
chromedriver or selenium is missing (``scripts/test.sh`` installs them)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from nerf_mapping.viewer.browser import find_browser, headless_chromium, screenshot_png, wait_for, wait_for_refined

_found = find_browser()
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(isinstance(_found, str), reason=f"no headless browser: {_found}")]


@pytest.fixture(scope="module")
def browser_map(tiny_scene, tmp_path_factory):
    from test_viewer import build_viewer_map

    return build_viewer_map(tiny_scene, tmp_path_factory.mktemp("viewer_map"))


def test_viewer_in_headless_chromium_shows_the_render_and_answers_a_query(browser_map, tiny_scene, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from nerf_mapping.viewer import Viewer, ViewerConfig
    from test_viewer import open_viewer_map

    t_test = time.monotonic()
    mapper = open_viewer_map(browser_map, tiny_scene)
    viewer = Viewer(mapper, ViewerConfig(port=0), output_dir=tmp_path)
    driver = None
    try:
        url = viewer.start()
        driver = headless_chromium(1280, 800)
        blank = screenshot_png(driver)  # about:blank: the variance of an empty page
        t_open = time.monotonic()
        driver.get(url)
        # the page connects, sends its camera, gets a coarse render at once and a refined one when still
        assert wait_for(lambda: viewer.stats().get("frames_sent", 0) >= 1, 30), viewer.stats()
        t_first = time.monotonic() - t_open
        assert wait_for_refined(viewer, 30), viewer.stats()
        time.sleep(1.5)  # the browser draws the image it got
        shot = screenshot_png(driver)
        view = next(iter(viewer._views.values()))
        sent = view.last_image
        h, w = shot.shape[:2]
        centre = shot[h // 4: 3 * h // 4, w // 8: w // 2].astype(np.float64)  # left of the panel, below the toast
        blank_var = float(blank.astype(np.float64).var())
        print(f"page usable (first render shown) {t_first:.2f} s after opening; screenshot centre std "
              f"{centre.std():.1f} (blank page {blank_var ** 0.5:.1f}); {viewer.stats()}")
        assert centre.var() > 100.0 + 10 * blank_var  # not a blank canvas
        # the render's colours are on the page: the sent image, stretched over the canvas as the browser does,
        # correlates with the screenshot there (frustums and paths drawn over it only add a little)
        from PIL import Image

        canvas = np.asarray(Image.fromarray(sent).resize((w, h), Image.BILINEAR)).astype(np.float64)
        ref = canvas[h // 4: 3 * h // 4, w // 8: w // 2]
        corr = np.corrcoef(ref.mean(-1).ravel(), centre.mean(-1).ravel())[0, 1]
        print(f"correlation of the screenshot with the render: {corr:.2f}; mean colour {centre.mean((0, 1))} vs "
              f"{ref.mean((0, 1))}")
        assert corr > 0.5 and np.abs(centre.mean((0, 1)) - ref.mean((0, 1))).max() < 25
        # a query typed into the page: its cloud comes back
        _wait_ready = wait_for(lambda: mapper.semantics._field_of is mapper.trainer, 60)
        assert _wait_ready
        box = driver.find_element(By.XPATH, "//label[normalize-space()='Text']/../../following-sibling::div//input")
        box.send_keys("floor")
        box.send_keys(Keys.TAB)
        assert wait_for(lambda: viewer.gui["query"].value == "floor", 10), viewer.gui["query"].value
        driver.find_element(By.XPATH, "//button[normalize-space()='Run query']").click()
        assert wait_for(lambda: viewer.last_query is not None and viewer._busy is None, 60), viewer.message
        assert len(viewer.last_query.xyz) > 0 and viewer.last_query.text == "floor", viewer.message
        assert viewer.server.scene.get_handle_by_name("/query") is not None
        assert wait_for(lambda: driver.find_elements(By.XPATH, "//*[normalize-space(text())='query']"), 15), \
            "the query cloud is not in the page's scene tree"
        assert wait_for(lambda: "floor" in driver.page_source, 10)  # the answer in the panel
        driver.save_screenshot(str(tmp_path / "viewer_query.png"))
    finally:
        if driver is not None:
            driver.quit()
        viewer.stop()
        mapper.stop()
    print(f"browser test: {time.monotonic() - t_test:.1f} s (without the shared map)")
