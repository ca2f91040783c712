"""The `serve` command's web side: aiohttp + aiortc server (server.py), offer checks (signaling.py), access
rules (security.py), one PeerSession per browser tab (session.py), the page (static/), and a harness that
drives the page with a real browser on one machine (harness.py, for tests and bench/live.py)."""
