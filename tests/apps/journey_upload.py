"""The test apps' uploader: log in, upload a file, download it back and compare.

Marks "logged out" (a 401 after a good login), "upload missing" (a 404 for a file the server
accepted) and "upload corrupt" (other bytes came back). It fetches each new file at once and
comes back to older ones now and then.
"""

import itertools
import os
import random

from locust import HttpUser, between, task

_numbers = itertools.count(1)


class Uploader(HttpUser):
    wait_time = between(0.1, 0.3)

    def on_start(self) -> None:
        self.username = f"uploader{next(_numbers):04d}"
        self.logged_in = False
        self.files: dict[str, bytes] = {}  # what the server accepted, by key

    def fetch(self, key: str) -> None:
        with self.client.get(f"/uploads/{key}", name="/uploads/[key]", catch_response=True) as r:
            if r.status_code == 401:
                r.failure("logged out")
                self.logged_in = False
            elif r.status_code == 404:
                r.failure("upload missing")
                del self.files[key]  # counted once
            elif r.status_code == 200 and r.content != self.files[key]:
                r.failure("upload corrupt")

    def login(self) -> None:
        with self.client.post("/login", json={"username": self.username, "password": "pw"},
                              catch_response=True) as r:
            self.logged_in = r.status_code == 200

    @task
    def upload_and_fetch(self) -> None:
        if not self.logged_in:
            return self.login()
        data = os.urandom(2048)
        with self.client.post("/uploads", files={"file": ("notes.bin", data)}, catch_response=True) as r:
            if r.status_code == 401:
                r.failure("logged out")
                self.logged_in = False
                return
            if r.status_code != 201:
                return
            key = r.json()["key"]
        self.files[key] = data
        self.fetch(key)

    @task
    def fetch_an_older_one(self) -> None:
        """Come back to a file uploaded earlier, as a user opening "my files" does."""
        if self.logged_in and self.files:
            self.fetch(random.choice(list(self.files)))
