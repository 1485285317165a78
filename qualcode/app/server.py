"""The web server of ``qualcode app``: Starlette routes over a :class:`Workspace`, Jinja2
templates and static files shipped in the package (no build step, no CDN, no request leaves
the machine)."""

from __future__ import annotations

import hmac
import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from qualcode.errors import QualcodeError
from qualcode.files.tables import read_table

if TYPE_CHECKING:
    from qualcode.app.workspace import Workspace

COOKIE = "qualcode_token"
SHOWN = 500  # rows on a Browse page (search or filter for the rest)
HERE = Path(__file__).parent
_templates = Environment(
    loader=PackageLoader("qualcode.app", "templates"), autoescape=select_autoescape(["html"])
)


class Guard:
    """ASGI middleware: the token, the Host header and same-origin POSTs, on every request."""

    def __init__(self, app: Any, workspace: Workspace, hosts: set[str]):
        self.app, self.workspace, self.hosts = app, workspace, hosts

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        host = request.headers.get("host", "")
        if host not in self.hosts:
            await PlainTextResponse("Okänd värd (Host) – nekad.", 403)(scope, receive, send)
            return
        token = self.workspace.token
        given = request.query_params.get("token") or request.cookies.get(COOKIE) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            await PlainTextResponse("Öppna adressen med token som `qualcode app` skrev ut.", 403)(
                scope, receive, send
            )
            return
        if request.method == "POST":
            origin = request.headers.get("origin") or request.headers.get("referer") or ""
            if origin and urlsplit(origin).netloc not in self.hosts:
                await PlainTextResponse("POST från en annan webbplats – nekad.", 403)(
                    scope, receive, send
                )
                return
        if request.query_params.get("token"):  # set the cookie, drop the token from the URL
            path = scope["path"]
            rest = "&".join(
                f"{k}={quote(v)}" for k, v in request.query_params.items() if k != "token"
            )
            response = RedirectResponse(path + (f"?{rest}" if rest else ""), 303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _coder(request: Request) -> str:
    from qualcode.labelling import default_coder

    return (request.cookies.get("qualcode_coder") or "").strip() or default_coder()


def _page(workspace: Workspace, request: Request, name: str, **context: Any) -> HTMLResponse:
    from qualcode.app.workspace import TEXTS

    template = _templates.get_template(name)
    html = template.render(
        t=TEXTS[workspace.lang],
        lang=workspace.lang,
        form_token=workspace.form_token(),
        coder=_coder(request),
        page=name.removesuffix(".html"),
        **context,
    )
    return HTMLResponse(html)


async def _form(workspace: Workspace, request: Request) -> dict[str, Any]:
    form = await request.form()
    if not hmac.compare_digest(str(form.get("form_token", "")), workspace.form_token()):
        raise QualcodeError("the form is stale or not from this page: reload the page")
    return {k: form.getlist(k) if k == "theme" else form.get(k) for k in form.keys()}


def create_app(workspace: Workspace, *, port: int = 8765, extra_hosts: tuple = ()) -> Any:
    """The ASGI app for ``workspace`` (requests must name ``127.0.0.1:port`` or
    ``localhost:port`` as Host, or one of ``extra_hosts``)."""

    def home(request: Request) -> HTMLResponse:
        ws = workspace
        files = {
            "segments.csv": ws.segments_path.exists(),
            "labels.csv": ws.labels_path.exists(),
            "model/": ws.model_dir.is_dir(),
            "predictions.csv": ws.predictions_path.exists(),
        }
        try:
            book = ws.codebook()
            codebook = f"{book.name} ({len(book.ids)} teman) – {book.path}"
        except QualcodeError as err:
            codebook = str(err)
        return _page(ws, request, "home.html", folder=ws.folder, files=files, codebook=codebook,
                     jobs=ws.jobs)  # fmt: skip

    def label(request: Request) -> HTMLResponse:
        session = workspace.session(_coder(request))
        with workspace.lock, session.store:
            session.refresh()
            i = session.next_segment()
            if i is None:
                return _page(workspace, request, "label.html", segment=None, session=session)
            suggestion, confidence, source = session.suggest(i)
        segment = session.segments.iloc[i]
        prev, nxt = session.neighbours[i]
        context = [session.segments.at[j, "text"] if j is not None else None for j in (prev, nxt)]
        respondent = {c: segment[c] for c in session.respondent_columns if str(segment[c])}
        return _page(
            workspace, request, "label.html", segment=segment, index=i, session=session,
            suggestion=suggestion, confidence=confidence, source=source, before=context[0],
            after=context[1], respondent=respondent, themes=session.codebook.themes,
        )  # fmt: skip

    async def answer(request: Request) -> Any:
        form = await _form(workspace, request)
        session = workspace.session(_coder(request))
        action = form.get("action") or "save"
        with workspace.lock, session.store:
            session.refresh()
            index = int(form.get("index", -1))
            if not 0 <= index < len(session.segments):
                raise QualcodeError("no such segment")
            note = str(form.get("note") or "")
            if action == "undo":
                session.undo(index)
            elif action == "skip":
                session.record(index, [], note)
            else:
                themes = [session.codebook.resolve(t) for t in form.get("theme", []) if t]
                if len(themes) > 1 and not session.multi_label:
                    themes = themes[:1]
                if not themes:
                    raise QualcodeError("choose a theme (or skip)")
                session.record(index, themes, note)
        return RedirectResponse("/label", 303)

    def set_coder(request: Request) -> Any:
        response = RedirectResponse("/label", 303)
        name = " ".join(request.query_params.get("name", "").split())[:60]
        if name:
            response.set_cookie("qualcode_coder", name, httponly=True, samesite="strict")
        return response

    def review(request: Request) -> HTMLResponse:
        rows = workspace.review_rows() if workspace.labels_path.exists() else None
        kinds = sorted(set(rows["disagreement"])) if rows is not None and len(rows) else []
        chosen = request.query_params.get("kind", "")
        if rows is not None and chosen:
            rows = rows[rows["disagreement"] == chosen]
        return _page(workspace, request, "review.html", rows=rows, kinds=kinds, chosen=chosen,
                     themes=workspace.codebook().themes)  # fmt: skip

    async def resolve(request: Request) -> Any:
        form = await _form(workspace, request)
        workspace.resolve(
            str(form.get("segment_id", "")),
            str(form.get("resolved_theme", "")),
            str(form.get("note", "")),
            _coder(request),
        )
        return RedirectResponse("/review", 303)

    def browse(request: Request) -> HTMLResponse:
        if not workspace.predictions_path.exists():
            return _page(workspace, request, "browse.html", rows=None, themes=[], query={})
        table = read_table(workspace.predictions_path, required=("text",))
        book = workspace.codebook()
        overview = workspace.overview(table, book)
        for column in ("document", "section", "theme", "needs_review"):
            if column not in table.columns:
                table[column] = ""
        choices = {c: sorted(set(table[c]) - {""}) for c in ("document", "section")}
        keys = ("q", "theme", "flag", "document", "section")
        query = {k: request.query_params.get(k, "") for k in keys}
        if query["q"]:
            table = table[table["text"].str.contains(query["q"], case=False, regex=False)]
        for key, column in (("theme", "theme"), ("flag", "needs_review"), ("document", "document"),
                            ("section", "section")):  # fmt: skip
            if query[key]:
                table = table[table[column] == query[key]]
        themes = book.themes
        return _page(workspace, request, "browse.html", rows=table.head(SHOWN), found=len(table),
                     query=query, themes=themes, choices=choices, overview=overview,
                     labels={t.id: t.label for t in themes})  # fmt: skip

    async def correct(request: Request) -> Any:
        form = await _form(workspace, request)
        themes = form.get("theme") or [""]
        workspace.correct(str(form.get("segment_id", "")), str(themes[0]), _coder(request))
        return RedirectResponse("/browse", 303)

    async def run_job(request: Request) -> Any:
        await _form(workspace, request)
        name = request.path_params["name"]
        work = {"train": workspace.train, "classify": workspace.classify}.get(name)
        if work is None:
            return PlainTextResponse("okänt jobb", 404)
        workspace.run(name, work)
        return RedirectResponse("/", 303)

    def status(request: Request) -> JSONResponse:
        return JSONResponse({n: j.as_dict() for n, j in workspace.jobs.items()})

    async def failed(request: Request, exc: Exception) -> HTMLResponse:
        return _page(workspace, request, "error.html", message=str(exc))

    routes = [
        Route("/", home),
        Route("/label", label),
        Route("/label", answer, methods=["POST"]),
        Route("/coder", set_coder),
        Route("/review", review),
        Route("/review", resolve, methods=["POST"]),
        Route("/browse", browse),
        Route("/browse", correct, methods=["POST"]),
        Route("/run/{name}", run_job, methods=["POST"]),
        Route("/status", status),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={QualcodeError: failed})
    hosts = {f"127.0.0.1:{port}", f"localhost:{port}", *extra_hosts}
    return Guard(app, workspace, hosts)


def serve(
    workspace: Workspace,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    open_browser: bool = True,
    say: Any = print,
) -> None:
    """Run the app until interrupted; ``say`` gets the URL with its token."""
    import uvicorn

    extra = (f"{host}:{port}",) if host not in ("127.0.0.1", "localhost") else ()
    app = create_app(workspace, port=port, extra_hosts=extra)
    url = f"http://{'127.0.0.1' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}/"
    url += f"?token={workspace.token}"
    say(f"qualcode app: {url}")
    if open_browser:
        webbrowser.open(url)
    uvicorn.run(app, host=host, port=port, log_level="warning")
