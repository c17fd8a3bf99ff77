"""Checks run inside a page: basic accessibility, keyboard focus, layout width, and axe-core.

The basic checks are small on purpose — each says what it looks for and names the element it
faults — and cover what every Aegis page promises: a name for every control, link and button,
a text alternative for every image, canvas and SVG, the landmarks (header, main, and the
navigation when signed in), one h1, a language, and references (label for, aria-labelledby,
aria-describedby, aria-controls) that point at elements that exist.

axe-core (Deque Systems, MPL-2.0) then runs the WCAG 2.1 A and AA rules, contrast included. It
is not part of Aegis: the first run fetches the published npm package from the registry, checks
its SHA-256 and keeps axe.min.js under var/cache/ (AEGIS_DATA_DIR), like any other test tool
installed on first use.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import urllib.request
from pathlib import Path

import pytest

from tests.support import REPO

AXE_VERSION = "4.14.1"
AXE_TARBALL = f"https://registry.npmjs.org/axe-core/-/axe-core-{AXE_VERSION}.tgz"
AXE_TARBALL_SHA256 = "e6b0ce02b84d892e2e33e403485e7f3d6c29e2be6df65daf44d89ba564139745"
AXE_CACHE = (
    Path(os.environ.get("AEGIS_DATA_DIR") or REPO / "var") / "cache" / f"axe-core-{AXE_VERSION}"
)
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]

BASIC_ACCESSIBILITY = r"""
(signedIn) => {
  const problems = [];
  const text = (element) => (element.textContent || "").replace(/\s+/g, " ").trim();
  const describe = (element) => {
    let name = element.tagName.toLowerCase();
    if (element.id) name += `#${element.id}`;
    else if (element.className && typeof element.className === "string")
      name += "." + element.className.trim().split(/\s+/).join(".");
    const words = text(element).slice(0, 40);
    return words ? `${name} "${words}"` : name;
  };
  const byIds = (value) =>
    (value || "").split(/\s+/).filter(Boolean).map((id) => document.getElementById(id));
  const ariaHidden = (element) => element.closest('[aria-hidden="true"]') !== null;

  // The accessible name, as far as these pages need it.
  const nameOf = (element) => {
    const labelledBy = byIds(element.getAttribute("aria-labelledby"));
    if (labelledBy.length && labelledBy.every(Boolean)) {
      const joined = labelledBy.map(text).join(" ").trim();
      if (joined) return joined;
    }
    const label = (element.getAttribute("aria-label") || "").trim();
    if (label) return label;
    if (element.labels && element.labels.length) {
      const joined = Array.from(element.labels).map(text).join(" ").trim();
      if (joined) return joined;
    }
    if (element.tagName === "IMG") return (element.getAttribute("alt") || "").trim();
    if (element.tagName === "INPUT" && ["submit", "button", "reset"].includes(element.type))
      return (element.value || "").trim();
    if (["BUTTON", "A", "SUMMARY"].includes(element.tagName)) {
      const own = text(element);
      if (own) return own;
      const image = element.querySelector("img[alt]");
      if (image && image.alt.trim()) return image.alt.trim();
    }
    return (element.getAttribute("title") || "").trim();
  };

  for (const control of document.querySelectorAll(
      'input:not([type="hidden"]), select, textarea')) {
    if (!nameOf(control)) problems.push(`form control without a label: ${describe(control)}`);
  }
  for (const button of document.querySelectorAll('button, [role="button"]')) {
    if (!nameOf(button)) problems.push(`button without a name: ${describe(button)}`);
  }
  for (const link of document.querySelectorAll("a[href]")) {
    if (!ariaHidden(link) && !nameOf(link)) problems.push(`link without a name: ${describe(link)}`);
  }
  for (const image of document.querySelectorAll("img")) {
    if (!image.hasAttribute("alt")) problems.push(`image without alt: ${describe(image)}`);
  }
  // A canvas or SVG needs a text alternative of its own (role="img" and a name), or a labelled
  // role="img" container (whose children are presentational), or to be hidden from assistive
  // technology as decoration.
  for (const picture of document.querySelectorAll("canvas, svg")) {
    if (ariaHidden(picture)) continue;
    if (picture.getAttribute("role") === "img" && nameOf(picture)) continue;
    const container = picture.parentElement && picture.parentElement.closest('[role="img"]');
    if (container && nameOf(container)) continue;
    const kind = picture.tagName.toLowerCase();
    problems.push(`${kind} without a text alternative: ${describe(picture)}`);
  }

  const count = (selector) => document.querySelectorAll(selector).length;
  if (count('main, [role="main"]') !== 1) problems.push(`${count("main")} main landmarks, not 1`);
  if (count('body > header, [role="banner"]') < 1) problems.push("no header (banner) landmark");
  if (signedIn && count('nav, [role="navigation"]') < 1) problems.push("no navigation landmark");
  if (count("h1") !== 1) problems.push(`${count("h1")} h1 headings, not 1`);
  if (!document.documentElement.lang) problems.push("the page has no lang");
  if (!document.title.trim()) problems.push("the page has no title");

  const seen = new Map();
  for (const element of document.querySelectorAll("[id]")) {
    seen.set(element.id, (seen.get(element.id) || 0) + 1);
  }
  for (const [id, times] of seen) if (times > 1) problems.push(`id "${id}" used ${times} times`);
  for (const attribute of ["aria-labelledby", "aria-describedby", "aria-controls"]) {
    for (const element of document.querySelectorAll(`[${attribute}]`)) {
      const ids = element.getAttribute(attribute).split(/\s+/).filter(Boolean);
      for (const id of ids) {
        if (!document.getElementById(id))
          problems.push(`${attribute}="${id}" points nowhere: ${describe(element)}`);
      }
    }
  }
  for (const label of document.querySelectorAll("label[for]")) {
    if (!document.getElementById(label.htmlFor))
      problems.push(`label for="${label.htmlFor}" points nowhere: ${describe(label)}`);
  }
  return problems;
}
"""

# What has keyboard focus, and whether a sighted keyboard user can see where it is: on screen,
# with an outline or a box shadow drawn around it.
FOCUSED = r"""
() => {
  const element = document.activeElement;
  if (!element || element === document.body || element === document.documentElement)
    return null;
  const style = getComputedStyle(element);
  const box = element.getBoundingClientRect();
  const firstLink = document.querySelector("a[href]");
  return {
    tag: element.tagName.toLowerCase(),
    id: element.id,
    text: (element.textContent || element.value || "").replace(/\s+/g, " ").trim().slice(0, 60),
    isFirstLink: element === firstLink,
    onScreen: box.width > 0 && box.height > 0 && box.bottom > 0 && box.right > 0
      && box.top < innerHeight && box.left < innerWidth,
    outline: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2,
    boxShadow: style.boxShadow !== "none",
    outlineText: `${style.outlineStyle} ${style.outlineWidth} ${style.outlineColor}`,
  };
}
"""

# How far the page is wider than the window: a page usable on a tablet scrolls vertically only
# (wide tables scroll inside their own box).
OVERFLOW = r"""
() => {
  const width = document.documentElement.clientWidth;
  const widest = Math.max(document.documentElement.scrollWidth, document.body.scrollWidth);
  const culprits = [];
  if (widest > width + 1) {
    for (const element of document.body.querySelectorAll("*")) {
      const box = element.getBoundingClientRect();
      if (box.right > width + 1 && getComputedStyle(element).position !== "fixed") {
        const name = element.tagName.toLowerCase() + (element.id ? `#${element.id}` :
          (typeof element.className === "string" && element.className.trim()
            ? "." + element.className.trim().split(/\s+/).join(".") : ""));
        culprits.push(`${name} (right edge ${Math.round(box.right)} px)`);
        if (culprits.length >= 5) break;
      }
    }
  }
  return {width: width, widest: widest, culprits: culprits};
}
"""

RUN_AXE = r"""
async (tags) => {
  const results = await axe.run(document, {runOnly: {type: "tag", values: tags},
                                            resultTypes: ["violations"]});
  return results.violations.map((violation) => ({
    id: violation.id,
    impact: violation.impact,
    help: violation.help,
    nodes: violation.nodes.slice(0, 5).map((node) => ({
      target: node.target.join(" "),
      summary: (node.failureSummary || "").replace(/\s+/g, " ").slice(0, 300),
    })),
    count: violation.nodes.length,
  }));
}
"""


def basic_accessibility_problems(page, *, signed_in: bool) -> list[str]:
    return page.evaluate(BASIC_ACCESSIBILITY, signed_in)


def focused(page) -> dict | None:
    return page.evaluate(FOCUSED)


def overflow(page) -> dict:
    return page.evaluate(OVERFLOW)


def axe_script() -> Path:
    """axe.min.js of the pinned axe-core release, fetched once and verified."""
    script = AXE_CACHE / "axe.min.js"
    if script.exists():
        return script
    try:
        with urllib.request.urlopen(AXE_TARBALL, timeout=60) as response:
            tarball = response.read()
    except OSError as error:
        pytest.fail(f"cannot fetch axe-core from {AXE_TARBALL}: {error}", pytrace=False)
    digest = hashlib.sha256(tarball).hexdigest()
    if digest != AXE_TARBALL_SHA256:
        pytest.fail(f"{AXE_TARBALL} has SHA-256 {digest}, not {AXE_TARBALL_SHA256}", pytrace=False)
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        source = archive.extractfile("package/axe.min.js").read()
    AXE_CACHE.mkdir(parents=True, exist_ok=True)
    partial = script.with_suffix(".partial")
    partial.write_bytes(source)
    partial.replace(script)  # whole or absent, should two sessions fetch it at once
    return script


def axe_violations(page) -> list[dict]:
    """axe-core's WCAG 2.1 A/AA violations of the page as it is now."""
    page.add_script_tag(path=str(axe_script()))
    return page.evaluate(RUN_AXE, AXE_TAGS)


def describe_violations(violations: list[dict]) -> str:
    return json.dumps(violations, indent=1, ensure_ascii=False)
