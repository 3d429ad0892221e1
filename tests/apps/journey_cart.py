"""The test apps' shopper: log in, add to the cart, read the cart and /me back.

Marks "logged out" (a 401 after a good login) and "cart lost" (the cart lacks an item the
server confirmed). Works against every app here that has the shop routes, the lab's own apps
included (their seeded accounts are user0001... with the seed's password).
"""

import itertools

from locust import HttpUser, between, task

PASSWORD = "statelab"  # the lab's seed password; the small test apps accept any
PRODUCTS = 20
_numbers = itertools.count(1)


class Shopper(HttpUser):
    wait_time = between(0.1, 0.3)

    def on_start(self) -> None:
        self.number = next(_numbers)
        self.username = f"user{self.number:04d}"
        self.logged_in = False
        self.cart: dict[int, int] = {}

    def login(self) -> None:
        with self.client.post("/login", json={"username": self.username, "password": PASSWORD},
                              catch_response=True) as r:
            if r.status_code == 200:
                self.logged_in = True
                self.cart = {}

    def _unauthorised(self, r) -> bool:
        if r.status_code == 401:
            r.failure("logged out")
            self.logged_in = False
            return True
        return False

    @task(3)
    def add_to_cart(self) -> None:
        if not self.logged_in:
            return self.login()
        product = 1 + (self.number + len(self.cart)) % PRODUCTS
        with self.client.post("/cart/items", json={"product_id": product, "qty": 1}, catch_response=True) as r:
            if not self._unauthorised(r) and r.status_code in (200, 201):
                self.cart[product] = self.cart.get(product, 0) + 1

    @task(2)
    def check_cart(self) -> None:
        if not self.logged_in:
            return self.login()
        with self.client.get("/cart", catch_response=True) as r:
            if self._unauthorised(r) or r.status_code != 200:
                return
            shown: dict[int, int] = {}
            for item in r.json().get("items", []):
                shown[int(item["product_id"])] = shown.get(int(item["product_id"]), 0) + int(item["qty"])
            if any(shown.get(p, 0) < q for p, q in self.cart.items()):
                r.failure("cart lost")
            self.cart = shown

    @task(1)
    def me(self) -> None:
        if not self.logged_in:
            return self.login()
        with self.client.get("/me", catch_response=True) as r:
            self._unauthorised(r)
