// A shop in Node.js, sessions and carts in a Map in this process: stateful, in another language.
// `statelab check --cmd "node node_sessions.js {port}" --journey journey_cart.py` must fail it.
"use strict";
const http = require("http");
const crypto = require("crypto");

const sessions = new Map(); // session id -> {user, cart: Map(product -> qty)}

function send(res, status, body, headers = {}) {
  res.writeHead(status, { "Content-Type": "application/json", ...headers });
  res.end(JSON.stringify(body));
}

function session(req) {
  const match = /(?:^|;\s*)sid=([0-9a-f]+)/.exec(req.headers.cookie || "");
  return match ? sessions.get(match[1]) : undefined;
}

function cartJson(s) {
  return { items: [...s.cart].map(([product_id, qty]) => ({ product_id, qty })) };
}

const server = http.createServer((req, res) => {
  let raw = "";
  req.on("data", (chunk) => (raw += chunk));
  req.on("end", () => {
    let body = {};
    try { body = raw ? JSON.parse(raw) : {}; } catch (e) { return send(res, 400, { error: "bad JSON" }); }
    if (req.method === "POST" && req.url === "/login") {
      if (!body.username || !body.password) return send(res, 400, { error: "username and password required" });
      const sid = crypto.randomBytes(16).toString("hex");
      sessions.set(sid, { user: body.username, cart: new Map() });
      return send(res, 200, { user: { username: body.username } }, { "Set-Cookie": `sid=${sid}; HttpOnly; Path=/` });
    }
    const s = session(req);
    if (["/me", "/cart", "/cart/items"].includes(req.url) && !s) return send(res, 401, { error: "not logged in" });
    if (req.method === "GET" && req.url === "/me") return send(res, 200, { user: { username: s.user } });
    if (req.method === "GET" && req.url === "/cart") return send(res, 200, cartJson(s));
    if (req.method === "POST" && req.url === "/cart/items") {
      const product = Number(body.product_id), qty = Number(body.qty || 1);
      s.cart.set(product, (s.cart.get(product) || 0) + qty);
      return send(res, 201, cartJson(s));
    }
    send(res, 404, { error: "not found" });
  });
});

server.listen(Number(process.argv[2] || process.env.PORT), "127.0.0.1");
// Stop taking connections, finish the requests in flight, drop idle keep-alive connections, exit.
process.on("SIGTERM", () => {
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});
