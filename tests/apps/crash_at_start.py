"""An app that imports but crashes while it starts: a required setting is missing. Exit 2 expected."""

import os

from flask import Flask


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["PAYMENT_API_KEY"] = os.environ["PAYMENT_API_KEY"]  # KeyError: nobody set it
    return app
