"""A shop whose session is Flask's own: a cookie signed with SECRET_KEY, held by the client.

Stateless, as long as every instance signs with the same secret (given to all of them with
`--env SECRET_KEY=...`): any instance can read any user's cookie, so nothing is lost when a user
moves. `statelab check` must pass it:
`statelab check signed_cookie:app --journey journey_cart.py --env SECRET_KEY=change-me`.
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, request, session

app = Flask(__name__)
app.secret_key = os.environ["SECRET_KEY"]  # the same on every instance, or sessions would not travel


def _cart_json() -> dict[str, object]:
    cart: dict[str, int] = session.get("cart", {})
    return {"items": [{"product_id": int(p), "qty": q} for p, q in sorted(cart.items(), key=lambda kv: int(kv[0]))]}


@app.post("/login")
def login():
    body = request.get_json(silent=True) or {}
    if not body.get("username") or not body.get("password"):
        return jsonify(error="username and password required"), 400
    session.clear()
    session["user"] = body["username"]
    session["cart"] = {}
    return jsonify(user={"username": body["username"]})


@app.get("/me")
def me():
    if "user" not in session:
        return jsonify(error="not logged in"), 401
    return jsonify(user={"username": session["user"]})


@app.get("/cart")
def cart():
    if "user" not in session:
        return jsonify(error="not logged in"), 401
    return jsonify(_cart_json())


@app.post("/cart/items")
def add_item():
    if "user" not in session:
        return jsonify(error="not logged in"), 401
    body = request.get_json(silent=True) or {}
    product, qty = str(int(body.get("product_id", 0))), int(body.get("qty", 1))
    cart: dict[str, int] = session.get("cart", {})
    cart[product] = cart.get(product, 0) + qty
    session["cart"] = cart  # a new dict: Flask notices the change and re-signs the cookie
    return jsonify(_cart_json()), 201
