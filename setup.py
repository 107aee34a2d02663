"""Package discovery only; all metadata lives in pyproject.toml.

cli/ and migrations/ sit at the top of the repo (thin Click layer, Alembic environment) but
install as histstore.cli and histstore.migrations, so the distribution claims no generic
top-level import names.
"""
from setuptools import find_packages, setup

MAPPED = {"histstore.cli": "cli", "histstore.migrations": "migrations"}

packages = find_packages(include=["histstore", "histstore.*"])
for name, folder in MAPPED.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(where=folder)]

setup(
    packages=packages,
    package_dir={"histstore": "histstore", **MAPPED},
    # the web app's own templates, CSS and JS (OpenSeadragon is not here: it comes from npm)
    package_data={"histstore.migrations": ["script.py.mako"], "histstore.web": ["templates/*.html", "static/*"]},
)
