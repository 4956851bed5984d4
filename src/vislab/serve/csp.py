"""Content-Security-Policy helpers for the server's HTML pages (the page at `/` and `/docs`).

A page's inline `<script>` and `<style>` blocks are allowed by their SHA-256, so nothing
injected into the page runs, and the rest of a policy keeps it talking to this server only.
"""

from __future__ import annotations

import base64
import hashlib
import re


def inline_hashes(html: str, tag: str) -> str:
    """The CSP source list allowing each attribute-less `<tag>...</tag>` block of `html`."""
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies)
