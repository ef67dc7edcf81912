"""The console's Models page: the catalog's slugs (a GET form picks one), the providers
that serve the chosen slug in route order, and quick-starts that call this gateway.

Any signed-in key may open it, members included. It reads the same catalog that
GET /v1/models and /v1/router/models/<slug>/providers answer from (ingress/catalog.py).
The quick-starts name the gateway as the browser reached it (`request.host_url`) and
read the key from the environment variable SWITCHBOARD_API_KEY: the viewer's own key
is never printed on the page.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from quart import Response, request

from ingress.console.base import console, page, signed_in
from ingress.respond import gateway

KEY_VARIABLE = "SWITCHBOARD_API_KEY"
PROMPT = "Say hello in one short sentence."


@dataclass(frozen=True, slots=True)
class QuickStart:
    """One quick-start tab: its title, the label over its code, an element id, the code."""

    title: str
    label: str
    ident: str
    code: str


def _literal(text: str) -> str:
    """`text` as a double-quoted Python string literal (a JSON string is one)."""
    return json.dumps(text)


def quick_starts(base_url: str, slug: str) -> list[QuickStart]:
    """The three quick-starts for `slug` against the API at `base_url` (…/v1), each a
    complete program that prints the model's answer (cURL prints the whole JSON)."""
    messages = f'[{{"role": "user", "content": {_literal(PROMPT)}}}]'
    openai_code = (
        "import os\n\n"
        "from openai import OpenAI\n\n"
        "client = OpenAI(\n"
        f"    base_url={_literal(base_url)},\n"
        f'    api_key=os.environ["{KEY_VARIABLE}"],\n'
        ")\n"
        "completion = client.chat.completions.create(\n"
        f"    model={_literal(slug)},\n"
        f"    messages={messages},\n"
        ")\n"
        "print(completion.choices[0].message.content)\n")
    requests_code = (
        "import os\n\n"
        "import requests\n\n"
        "response = requests.post(\n"
        f"    {_literal(base_url + '/chat/completions')},\n"
        f'    headers={{"Authorization": "Bearer " + os.environ["{KEY_VARIABLE}"]}},\n'
        f'    json={{"model": {_literal(slug)}, "messages": {messages}}},\n'
        "    timeout=60,\n"
        ")\n"
        "response.raise_for_status()\n"
        'print(response.json()["choices"][0]["message"]["content"])\n')
    body = json.dumps({"model": slug, "messages": [{"role": "user", "content": PROMPT}]})
    curl_code = (
        f"curl -sS --fail-with-body {shlex.quote(base_url + '/chat/completions')} \\\n"
        f'  -H "Authorization: Bearer ${KEY_VARIABLE}" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f"  -d {shlex.quote(body)}\n")
    return [QuickStart("Python (OpenAI)", "quickstart.py · pip install openai",
                       "quickstart-openai", openai_code),
            QuickStart("Python (requests)", "quickstart.py · pip install requests",
                       "quickstart-requests", requests_code),
            QuickStart("cURL", "shell", "quickstart-curl", curl_code)]


@console.get("/models")
async def models() -> Response:
    """The Models page (`?model=SLUG` picks one; the first slug by default; an unknown
    slug is a 404 page)."""
    viewer = await signed_in("member")
    gw = gateway()
    catalog = gw.catalog
    slugs = [card.id for card in catalog.model_list().data]
    names = {model.id: model.name for model in catalog.router_list().data}
    if not slugs:
        return await page("models.html", viewer, "models", title="Models", slugs=[])
    requested = request.args.get("model") or slugs[0]
    gw.bounds.model(requested, "model")
    served = catalog.providers_of(requested)  # 404 `model_not_found` for an unknown slug
    base_url = request.host_url.rstrip("/") + "/v1"
    return await page("models.html", viewer, "models", title=f"Models · {requested}",
                      slugs=slugs, names=names, chosen=requested, providers=served.data,
                      base_url=base_url, quick_starts=quick_starts(base_url, requested),
                      key_variable=KEY_VARIABLE, open_routing=gw.config.open_routing)
