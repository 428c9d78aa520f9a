"""The web pages' templates: the report's and the explorer's page of its own (aelab/templates/)."""

from __future__ import annotations

import markupsafe

from . import plots


def template(name: str = "report.html.j2"):
    """A page's Jinja2 template (aelab/templates/NAME), autoescaping on: every value is HTML-escaped
    unless marked safe by the caller (code and CSS aelab wrote), JSON in scripts goes through the one
    filter ``script_json`` (plots.script_json)."""
    import jinja2

    environment = jinja2.Environment(loader=jinja2.PackageLoader("aelab", "templates"), autoescape=True,
                                     undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    environment.filters["script_json"] = lambda value: markupsafe.Markup(plots.script_json(value))
    return environment.get_template(name)
