"""A shop that keeps its sessions and carts in a dict in its own memory: the classic stateful app.

What a user brings: it works on one instance and on a laptop; behind a load balancer with two
instances, half of a user's requests land where their session is unknown. `statelab check` must
fail it. Run: `statelab check inproc_sessions:app --journey journey_cart.py`.
"""

from __future__ import annotations

import secrets
import threading

from flask import Flask, jsonify, request

app = Flask(__name__)
_sessions: dict[str, dict[str, object]] = {}  # session id -> {"user": name, "cart": {product: qty}}
_lock = threading.Lock()


def _session() -> dict[str, object] | None:
    return _sessions.get(request.cookies.get("sid", ""))


def _cart_json(cart: dict[int, int]) -> dict[str, object]:
    return {"items": [{"product_id": p, "qty": q} for p, q in sorted(cart.items())]}


@app.post("/login")
def login():
    body = request.get_json(silent=True) or {}
    if not body.get("username") or not body.get("password"):
        return jsonify(error="username and password required"), 400
    sid = secrets.token_hex(16)
    with _lock:
        _sessions[sid] = {"user": body["username"], "cart": {}}
    response = jsonify(user={"username": body["username"]})
    response.set_cookie("sid", sid, httponly=True)
    return response


@app.get("/me")
def me():
    session = _session()
    if session is None:
        return jsonify(error="not logged in"), 401
    return jsonify(user={"username": session["user"]})


@app.get("/cart")
def cart():
    session = _session()
    if session is None:
        return jsonify(error="not logged in"), 401
    return jsonify(_cart_json(session["cart"]))


@app.post("/cart/items")
def add_item():
    session = _session()
    if session is None:
        return jsonify(error="not logged in"), 401
    body = request.get_json(silent=True) or {}
    product, qty = int(body.get("product_id", 0)), int(body.get("qty", 1))
    with _lock:
        items: dict[int, int] = session["cart"]
        items[product] = items.get(product, 0) + qty
    return jsonify(_cart_json(items)), 201
