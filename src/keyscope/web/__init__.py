"""The web interface (`keyscope serve --admin-listen`): see `app.create_web_app`."""

from keyscope.web.app import create_web_app

__all__ = ["create_web_app"]
