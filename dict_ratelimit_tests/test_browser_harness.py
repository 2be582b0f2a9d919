"""The headless-browser harness itself (browser.py), on tiny pages written for each test.

These run real Chromium; without it they fail (never skip), saying how to install it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dict_ratelimit_tests.browser import BrowserError, find_chromium, render_page

pytestmark = pytest.mark.e2e  # starts a browser: not part of the pure fast loop


@pytest.fixture(autouse=True)
def _chromium_installed() -> None:
    if find_chromium() is None:
        pytest.fail(
            "chromium is not installed: run scripts/install-chromium (as root)", pytrace=False
        )


def write(tmp_path: Path, body: str) -> Path:
    page = tmp_path / "page.html"
    page.write_text(
        f"<!doctype html>\n<html><head><title>t</title></head><body>\n{body}\n</body></html>"
    )
    return page


def test_console_errors_warnings_and_uncaught_exceptions_are_reported(tmp_path: Path) -> None:
    page = write(
        tmp_path,
        """
        <script>
          console.log("just chatter");
          console.warn("careful", 42);
          console.error("chart failed", 7);
        </script>
        <img src="missing.png">
        <script>notDefined();</script>
        <script>setTimeout(() => { throw new Error("late failure"); }, 0);</script>
        """,
    )
    rendered = render_page(page)

    texts = [message.text for message in rendered.console]
    assert not any("chatter" in text for text in texts), "console.log is not reported"
    assert [m.text for m in rendered.warnings] == ["careful 42"]
    console_errors = [m for m in rendered.errors if m.source == "console"]
    line = next(n for n, text in enumerate(page.read_text().splitlines(), 1) if "chart" in text)
    assert [(m.text, m.exception, m.url, m.line) for m in console_errors] == [
        ("chart failed 7", False, page.as_uri(), line)
    ]
    exceptions = [m for m in rendered.errors if m.exception]
    assert len(exceptions) == 2, rendered.console
    assert "ReferenceError: notDefined is not defined" in exceptions[0].text
    assert "Error: late failure" in exceptions[1].text  # thrown after load, before the report
    assert all(m.level == "error" and m.source == "exception" for m in exceptions)
    network = [m for m in rendered.errors if m.source == "log:network"]
    assert len(network) == 1 and network[0].url == (tmp_path / "missing.png").as_uri()


def test_clean_svg_page_has_no_errors_and_the_dom_holds_what_scripts_drew(tmp_path: Path) -> None:
    page = write(
        tmp_path,
        """
        <svg id="chart" width="200" height="100">
          <circle class="point" cx="10" cy="90" r="3"/>
          <circle class="point" cx="60" cy="40" r="3"/>
        </svg>
        <script>
          window.addEventListener("load", () => {
            const dot = document.createElementNS("http://www.w3.org/2000/svg", "circle");
            dot.setAttribute("class", "point");
            dot.setAttribute("data-value", "1200");
            document.getElementById("chart").appendChild(dot);
          });
        </script>
        """,
    )
    rendered = render_page(
        page,
        evaluate=[
            "document.querySelectorAll('svg .point').length",
            "[...document.querySelectorAll('svg .point')].map(p => p.getAttribute('cx'))",
            "document.getElementById('chart').getBBox().width > 0",
        ],
    )

    assert rendered.console == []
    assert rendered.errors == []
    assert rendered.values == [3, ["10", "60", None], True]
    assert rendered.dom.startswith("<html>")
    assert '<circle class="point" data-value="1200"></circle>' in rendered.dom


def test_wait_for_sees_a_late_chart_and_a_throwing_expression_raises(tmp_path: Path) -> None:
    page = write(
        tmp_path,
        """
        <div id="chart"></div>
        <script>
          setTimeout(() => {
            document.getElementById("chart").innerHTML = "<svg><rect class='bar'/></svg>";
          }, 300);
        </script>
        """,
    )
    rendered = render_page(
        page,
        wait_for="document.querySelector('#chart .bar') !== null",
        evaluate=["document.querySelectorAll('.bar').length"],
        timeout=30,
    )
    assert rendered.values == [1]
    assert rendered.errors == []

    with pytest.raises(BrowserError, match="noSuchFunction is not defined"):
        render_page(page, evaluate=["noSuchFunction()"], timeout=30)
