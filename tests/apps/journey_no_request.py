"""A journey whose user never sends a request (it only thinks). The check must stop with exit 2."""

from locust import HttpUser, constant, task


class Thinker(HttpUser):
    wait_time = constant(0.5)

    @task
    def think(self) -> None:
        pass
