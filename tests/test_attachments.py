"""Files in and out, end to end: the real slack-bolt/slack-sdk and discord.py against fakes that serve files
(and check the platform's auth for them) and take uploads, the real dispatcher, inbox and agent on a scripted
model that can see images or not. Also the converters on real files of each kind, the limits, and the console.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dspy.lm15 import Request

from adapters.console import ConsoleAdapter, local_attachments, write_files
from adapters.discord import DiscordAdapter, DiscordConfig
from adapters.slack import SlackAdapter, SlackConfig
from agent.attachments.convert import classify, convert
from agent.attachments.models import Attachment, AttachmentRefused, Limits, Outbox
from agent.attachments.reader import read_attachments
from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import request_images, request_text
from agent.messages import IncomingMessage, Reply
from agent.ports import Handlers
from agent.runtime import Agent, AgentOptions
from agent.storage import Storage
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from agent.tools.registry import ToolOverride
from agent.tools.sql import sql_tool
from bot.dispatcher import Dispatcher, DispatchOptions
from bot.http import build_http_app, serve
from tests import attachment_files as files
from tests.fakes.discord import FakeDiscord
from tests.fakes.http_server import FakeHTTPServer, text
from tests.fakes.slack import FakeSlack
from tests.slack_world import SECRET, World

NOTES = b"The launch is planned for March 3.\nOwner: Ana.\n"
CSV = b"region,total\nnorth,1200\nsouth,700\n"
PDF_TEXT = "Quarterly report\nRevenue grew 12 percent"
LIMITS = Limits(max_files=10, max_bytes=200_000, max_chars=20_000, timeout_s=10)
ROWS = 500
LATIN = "Le caf\u00e9 cr\u00e8me co\u00fbte trois euros \u00e0 la brasserie pr\u00e8s de l'\u00e9glise, d\u00e9j\u00e0."


def question_of(request: Request) -> str:
    return request_text(request).rsplit("[[ ## question ## ]]", 1)[1].split("\n\n", 1)[0].strip()


def model(request: Request) -> dict[str, Any]:
    """ "list all items" queries the database once; otherwise it finishes and says how many images it saw."""
    prompt = request_text(request)
    queried = "[[ ## tool_name_0 ## ]]\nsql_query" in prompt
    if "next_tool_name" in prompt:
        if question_of(request) == "list all items" and not queried:
            query = {"query": "SELECT id, name FROM items ORDER BY id"}
            return {"next_thought": "query", "next_tool_name": "sql_query", "next_tool_args": query}
        return {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}}
    if queried:
        return {"reasoning": "", "answer": f"There are {ROWS} items, item-1 to item-{ROWS}; the full list is attached."}
    return {"reasoning": "", "answer": f"I looked at the files ({len(request_images(request))} images)."}


@pytest.fixture
def items_db(tmp_path: Path) -> Path:
    path = tmp_path / "items.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        db.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"item-{i}") for i in range(1, ROWS + 1)])
    return path


def make_agent(storage: Storage, items_db: Path, *, vision: bool) -> tuple[Agent, ToolRunner, ScriptedEngine]:
    registry = ToolRegistry.of(*BUILTIN_TOOLS, sql_tool(items_db))
    registry.configure({"sql_query": ToolOverride(approval="allow")})
    runner = ToolRunner(registry)
    engine = ScriptedEngine(responder=model, vision=vision)
    agent = Agent(storage, scripted_model(engine), runner, AgentOptions(max_iters=3, attachments=LIMITS))
    return agent, runner, engine


@dataclass
class SlackFiles:
    world: World
    engine: ScriptedEngine


@pytest.fixture(params=[True, False], ids=["vision", "text-only"])
def vision(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
async def slack(storage: Storage, fake: FakeSlack, items_db: Path, vision: bool) -> AsyncIterator[SlackFiles]:
    agent, runner, engine = make_agent(storage, items_db, vision=vision)
    config = SlackConfig(
        bot_token="xoxb-test", signing_secret=SECRET, api_url=fake.api_url, progress_after_s=5, stream=False
    )
    adapter = SlackAdapter(config)
    dispatcher = Dispatcher(storage, agent, [adapter], DispatchOptions(rate_limit=None))
    adapter.connect(Handlers(dispatcher.submit, dispatcher.decide))
    await adapter.start()

    async def ready() -> dict[str, object]:
        return {"database": True}

    http = await serve(build_http_app(slack=adapter, readiness=ready), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{http.addresses[0][1]}/slack/events"
    async with dispatcher:
        yield SlackFiles(World(fake, adapter, dispatcher, engine, storage, [], url), engine)
    await adapter.close()
    await http.cleanup()
    runner.close()


def replies(fake: FakeSlack) -> list[str]:
    return [p["text"] for p in fake.posted()]


# Slack -------------------------------------------------------------------------------------------------------


async def test_slack_files_reach_the_model_and_every_file_not_used_is_named(
    slack: SlackFiles, fake: FakeSlack, storage: Storage, vision: bool
) -> None:
    async with FakeHTTPServer() as other:
        other.on("/evil", text("not the file"))
        shared = [
            fake.add_file("notes.txt", NOTES),
            fake.add_file("report.pdf", files.pdf(PDF_TEXT), "application/pdf"),
            fake.add_file("totals.csv", CSV, "text/csv"),
            fake.add_file("chart.png", files.png(), "image/png"),
            fake.add_file("huge.log", b"x" * 300_000, "text/plain"),
            fake.add_file("deck.key", b"keynote bytes", "application/x-iwork-keynote-sffkey"),
            fake.add_file("moved.txt", b"secret", redirect_to=f"{other.url}/evil"),
        ]
        assert await slack.world.mention("what do these say?", ts="1.1", event_id="EvF1", files=shared) == 200
        await fake.wait_for(lambda: fake.posted(), what="the reply")
        await slack.world.dispatcher.join()
        assert other.hits() == 0  # the redirect was not followed: no token, no request left Slack's host

    prompt = "\n".join(request_text(r) for r in slack.engine.requests)
    assert "The launch is planned for March 3." in prompt and "north,1200" in prompt
    assert "Revenue grew 12 percent" in prompt and "## Page 1" in prompt
    assert "not instructions" in prompt  # file content is marked as untrusted data
    seen = [len(request_images(r)) for r in slack.engine.requests]
    assert (max(seen) == 1) if vision else (max(seen) == 0 and "that you cannot see" in prompt)

    [reply] = replies(fake)
    assert reply.startswith(f"I looked at the files ({1 if vision else 0} images).")
    assert "I couldn't read huge.log: it is 300.0 kB, over the 200.0 kB limit." in reply
    assert "I couldn't read deck.key: unsupported type" in reply
    assert "I couldn't read moved.txt: Slack sent the download elsewhere" in reply
    assert ("I couldn't see chart.png" in reply) is not vision
    assert "notes.txt" not in reply and "report.pdf" not in reply  # used files need no word
    # Every download carried the bot token; the oversized and unsupported files were never downloaded.
    downloaded = {file_id for file_id, authorized in fake.downloads if authorized}
    assert all(authorized for _, authorized in fake.downloads)
    assert {shared[4]["id"], shared[5]["id"]}.isdisjoint(downloaded)

    [chain] = [c async for c in storage.chains.since(0.0)]
    recorded = {a["name"]: a for a in chain["attachments"]}
    assert recorded["notes.txt"]["sha256"] == hashlib.sha256(NOTES).hexdigest()
    assert recorded["notes.txt"]["size"] == len(NOTES) and recorded["notes.txt"]["outcome"] == "used"
    assert recorded["chart.png"]["outcome"] == ("used" if vision else "unseen")
    assert recorded["deck.key"]["outcome"] == "skipped" and recorded["deck.key"]["sha256"] == ""
    assert "The launch" not in str(chain["attachments"])  # names and hashes, never contents


@pytest.mark.parametrize("vision", [False], indirect=True)
async def test_a_file_shared_earlier_in_the_thread_is_read(slack: SlackFiles, fake: FakeSlack) -> None:
    earlier = fake.add_file("plan.md", b"# Plan\nShip the beta on Friday.\n", "text/markdown")
    fake.seed_thread(
        "C1", "5.0", [{"ts": "5.0", "text": "kick-off"}, {"ts": "5.1", "text": "the plan", "files": [earlier]}]
    )
    await slack.world.mention("when do we ship?", ts="5.2", event_id="EvF2", thread_ts="5.0")
    await fake.wait_for(lambda: fake.posted(), what="the reply")
    await slack.world.dispatcher.join()
    prompt = request_text(slack.engine.requests[-1])
    assert 'file "plan.md" (from an earlier message)' in prompt and "Ship the beta on Friday." in prompt
    assert "<U1>: the plan" in prompt  # the thread's text still comes along
    assert len(fake.calls_to("conversations.replies")) == 1  # read once for its text and its files
    assert fake.posted()[0]["thread_ts"] == "5.0"


@pytest.mark.parametrize("vision", [False], indirect=True)
async def test_a_dm_that_only_shares_a_file_is_answered(slack: SlackFiles, fake: FakeSlack) -> None:
    shared = fake.add_file("notes.txt", NOTES)
    event = {
        "type": "message",
        "subtype": "file_share",
        "channel_type": "im",
        "user": "U1",
        "text": "",
        "ts": "7.1",
        "channel": "D1",
        "files": [shared],
    }
    from tests.fakes.slack import event_callback_body

    status, _ = await slack.world.post(event_callback_body(event, event_id="EvF3"))
    assert status == 200
    await fake.wait_for(lambda: fake.posted(), what="the reply")
    assert "The launch is planned" in request_text(slack.engine.requests[-1])


@pytest.mark.parametrize("vision", [False], indirect=True)
async def test_an_event_whose_files_are_not_files_is_dropped_at_the_edge(slack: SlackFiles, fake: FakeSlack) -> None:
    assert await slack.world.mention("hello", ts="8.1", event_id="EvF4", files="not a list") == 200
    await asyncio.sleep(0.2)
    assert fake.posted() == [] and slack.engine.requests == []


@pytest.mark.parametrize("vision", [False], indirect=True)
async def test_a_long_query_result_is_summarised_and_posted_as_csv_in_the_thread(
    slack: SlackFiles, fake: FakeSlack, storage: Storage
) -> None:
    await slack.world.mention("list all items", ts="9.1", event_id="EvF5")
    await fake.wait_for(lambda: fake.shared_files(), what="the file")
    await slack.world.dispatcher.join()
    [reply] = replies(fake)
    assert reply == f"There are {ROWS} items, item-1 to item-{ROWS}; the full list is attached."
    [shared] = fake.shared_files()
    assert (shared["name"], shared["channel"], shared["thread_ts"]) == ("query-result.csv", "C1", "9.1")
    lines = shared["content"].splitlines()
    assert lines[0] == "id,name" and len(lines) == ROWS + 1 and lines[-1] == f"{ROWS},item-{ROWS}"
    prompt = request_text(slack.engine.requests[-1])
    assert f"all {ROWS} rows are posted with your answer as query-result.csv" in prompt
    [chain] = [c async for c in storage.chains.since(0.0)]
    [posted] = chain["attachments"]
    assert (posted["direction"], posted["name"], posted["outcome"]) == ("out", "query-result.csv", "posted")


@pytest.mark.parametrize("vision", [False], indirect=True)
async def test_a_stored_reply_delivers_its_file_after_a_restart(
    slack: SlackFiles, fake: FakeSlack, storage: Storage
) -> None:
    """The reply's file is stored with it in the inbox: a process that restarts delivers both."""
    message = IncomingMessage(
        platform="slack", workspace="T1", channel="C1", thread="3.3", user="U1", text="q", event_id="EvR"
    )
    entry = await storage.inbox.accept(message)
    assert entry is not None
    outbox = Outbox()
    assert outbox.post_file("rows.csv", b"a,b\n1,2\n") == "rows.csv"
    await storage.inbox.answer(entry.id, Reply("the summary", files=outbox.files))  # then the process died
    restarted = Dispatcher(storage, slack.world.dispatcher.responder, [slack.world.adapter], DispatchOptions())
    async with restarted:
        await fake.wait_for(lambda: fake.shared_files(), what="the file")
        await restarted.join()
    assert replies(fake) == ["the summary"]
    [shared] = fake.shared_files()
    assert (shared["name"], shared["content"], shared["thread_ts"]) == ("rows.csv", "a,b\n1,2\n", "3.3")
    assert slack.engine.requests == []  # delivered from the stored reply, not answered again
    assert await storage.inbox.unfinished(["slack"]) == []


# Discord -----------------------------------------------------------------------------------------------------

CHANNEL = "4000"


@dataclass
class DiscordFiles:
    fake: FakeDiscord
    adapter: DiscordAdapter
    dispatcher: Dispatcher
    engine: ScriptedEngine

    async def answered(self, count: int) -> list[dict[str, Any]]:
        await self.fake.wait_for(lambda: len(self.fake.messages(CHANNEL)) >= count, what=f"{count} messages")
        await self.dispatcher.join()
        return self.fake.messages(CHANNEL)


@pytest.fixture
async def discord_world(storage: Storage, items_db: Path) -> AsyncIterator[DiscordFiles]:
    with FakeDiscord(channel_ids=(CHANNEL,)) as fake:
        agent, runner, engine = make_agent(storage, items_db, vision=False)
        config = DiscordConfig(
            token=fake.token, api_url=fake.api_url, gateway_url=fake.gateway_url, ready_timeout_s=0.05, stream=False
        )
        adapter = DiscordAdapter(config)
        dispatcher = Dispatcher(storage, agent, [adapter], DispatchOptions(rate_limit=None))
        adapter.connect(Handlers(dispatcher.submit, dispatcher.decide))
        async with dispatcher:
            await adapter.start()
            yield DiscordFiles(fake, adapter, dispatcher, engine)
            await adapter.close()
        runner.close()


async def test_discord_attachments_are_read_from_signed_urls_and_skipped_ones_named(
    discord_world: DiscordFiles,
) -> None:
    fake = discord_world.fake
    async with FakeHTTPServer() as other:
        other.on("/evil", text("not the file"))
        attachments = [
            fake.add_attachment("notes.txt", NOTES),
            fake.add_attachment("report.pdf", files.pdf(PDF_TEXT), "application/pdf"),
            fake.add_attachment("chart.png", files.png(), "image/png"),
            fake.add_attachment("big.csv", b"a,b\n" * 100_000, "text/csv"),
            fake.add_attachment("bundle.zip", files.zipped(a=b"x"), "application/zip"),
            fake.add_attachment("moved.txt", b"x", redirect_to=f"{other.url}/evil"),
        ]
        fake.message_create("<@2000> what is in these?", mentions_bot=True, attachments=attachments)
        [reply] = await discord_world.answered(1)
        assert other.hits() == 0
    prompt = request_text(discord_world.engine.requests[-1])
    assert "The launch is planned for March 3." in prompt and "Revenue grew 12 percent" in prompt
    assert request_images(discord_world.engine.requests[-1]) == []  # a text-only model
    text_ = reply["content"]
    assert "I couldn't read big.csv: it is 400.0 kB, over the 200.0 kB limit." in text_
    assert "I couldn't read bundle.zip: it is an archive, and Parley does not unpack archives" in text_
    assert "I couldn't read moved.txt: Discord sent the download elsewhere" in text_
    assert "I couldn't see chart.png: the model I use does not take images." in text_
    assert fake.downloads and all(signed for _, signed in fake.downloads)


async def test_discord_files_of_the_replied_to_message_are_read(discord_world: DiscordFiles) -> None:
    fake = discord_world.fake
    first = fake.message_create("here is the plan", attachments=[fake.add_attachment("plan.md", b"Ship on Friday.")])
    fake.message_create("<@2000> when do we ship?", mentions_bot=True, reply_to=first["id"])
    await discord_world.answered(1)
    prompt = request_text(discord_world.engine.requests[-1])
    assert 'file "plan.md" (from an earlier message)' in prompt and "Ship on Friday." in prompt


async def test_discord_query_result_is_posted_as_a_file_after_the_summary(discord_world: DiscordFiles) -> None:
    discord_world.fake.message_create("<@2000> list all items", mentions_bot=True)
    summary, attached = await discord_world.answered(2)
    assert summary["content"] == f"There are {ROWS} items, item-1 to item-{ROWS}; the full list is attached."
    assert [a["filename"] for a in attached["attachments"]] == ["query-result.csv"]
    [post] = [r for r in discord_world.fake.requests_to("POST /channels/{id}/messages") if r.json.get("_uploads")]
    lines = post.json["_uploads"]["query-result.csv"].splitlines()
    assert lines[0] == "id,name" and len(lines) == ROWS + 1


# The agent layer ---------------------------------------------------------------------------------------------


def attachment(name: str, content: bytes, media_type: str = "text/plain") -> Attachment:
    async def fetch(max_bytes: int) -> bytes:
        return content

    return Attachment(name, media_type, len(content)).bound(fetch)


async def test_the_text_budget_is_shared_and_what_is_cut_is_said() -> None:
    limits = Limits(max_files=3, max_chars=1000)
    shared = [
        attachment("short.txt", b"s" * 100),
        attachment("long.txt", b"l" * 5000),
        attachment("longer.txt", b"m" * 9000),
        attachment("fourth.txt", b"x"),
    ]
    readings = await read_attachments(shared, limits)
    kept = {f.name: len(f.text) for f in readings.files}
    assert kept == {"short.txt": 100, "long.txt": 450, "longer.txt": 450, "fourth.txt": 0}
    assert readings.notes(vision=False) == [
        "I read only the first 450 of 5,000 characters of long.txt.",
        "I read only the first 450 of 9,000 characters of longer.txt.",
        "I couldn't read fourth.txt: only 3 files are read per message.",
    ]


async def test_a_failing_or_unbound_fetch_is_named_not_raised() -> None:
    async def refused(max_bytes: int) -> bytes:
        raise AttachmentRefused("Slack refused Parley access to it (HTTP 403)")

    async def broken(max_bytes: int) -> bytes:
        raise ConnectionResetError

    shared = [
        Attachment("a.txt", "text/plain", 3).bound(refused),
        Attachment("b.txt", "text/plain", 3).bound(broken),
        Attachment("c.txt", "text/plain", 3),
    ]
    notes = (await read_attachments(shared, Limits())).notes(vision=True)
    assert notes == [
        "I couldn't read a.txt: Slack refused Parley access to it (HTTP 403).",
        "I couldn't read b.txt: the download failed.",
        "I couldn't read c.txt: Parley could not download it.",
    ]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "report.docx",
            files.docx("Budget", "We spend less.", table=[["item", "cost"], ["cloud", "12"]]),
            "| cloud | 12 |",
        ),
        ("deck.pptx", files.pptx("Roadmap\nBeta in May"), "Beta in May"),
        ("sales.xlsx", files.xlsx([["region", "total"], ["north", 12]]), "north,12"),
        ("page.html", b"<html><script>steal()</script><body><h1>Title</h1><p>Body text</p></body></html>", "# Title"),
        ("notes.txt", LATIN.encode("cp1252"), LATIN),
        ("scan.pdf", files.pdf("Page one", "Page two"), "## Page 2\n\nPage two"),
    ],
)
def test_documents_become_markdown(name: str, content: bytes, expected: str) -> None:
    converted = convert(content, classify(name, "", content), max_chars=10_000)
    assert expected in converted.text and "steal()" not in converted.text


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("bundle.zip", files.zipped(a=b"x"), "archive"),
        ("logs.tar.gz", b"\x1f\x8b\x08\x00" + b"\x00" * 20, "archive"),
        ("old.doc", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 20, "old Office format"),
        ("fake.pdf", b"%PDF-1.4 garbage", "not a readable PDF"),
        ("fake.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not a readable image"),
        ("blob.txt", b"\x00\xff\xfe\x00" * 100, "binary"),
        ("empty.txt", b"   \n", "no text"),
    ],
)
def test_files_that_cannot_be_read_are_refused_with_a_reason(name: str, content: bytes, reason: str) -> None:
    kind = classify(name, "", content)
    with pytest.raises(AttachmentRefused, match=reason):
        convert(content, kind, max_chars=1000)


def test_an_office_zip_bomb_is_refused_before_it_is_unpacked(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.attachments.convert as conversions

    monkeypatch.setattr(conversions, "MAX_UNPACKED_BYTES", 10_000_000)
    bomb = files.zip_bomb(20_000_000)
    assert len(bomb) < 100_000
    with pytest.raises(AttachmentRefused, match="would unpack to more than 10 MB"):
        convert(bomb, classify("report.docx", "", bomb), max_chars=1000)


async def test_a_slow_conversion_is_abandoned_at_its_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import agent.attachments.convert as conversions

    release = threading.Event()

    def stuck(data: bytes, max_chars: int) -> conversions.Converted:
        release.wait(5)
        return conversions.Converted("late")

    monkeypatch.setattr(conversions, "_text", stuck)
    readings = await read_attachments([attachment("slow.txt", b"x")], Limits(timeout_s=0.2))
    release.set()
    assert readings.notes(vision=False) == ["I couldn't read slow.txt: reading it took longer than 0.2 s."]


async def test_the_agent_records_which_files_it_used(storage: Storage, items_db: Path) -> None:
    agent, runner, _ = make_agent(storage, items_db, vision=True)
    message = IncomingMessage(
        platform="console",
        channel="c",
        user="u",
        text="look",
        attachments=(attachment("a.png", files.png(), "image/png"), attachment("b.txt", b"hello")),
    )
    exchange = await agent.respond(message)
    assert exchange.chain is not None
    reply = await storage.record_exchange(message.conversation, exchange.chain, exchange.reply)
    assert reply.chain_id is not None
    stored = await storage.chains.attachments(reply.chain_id)
    assert [(a.name, a.media_type, a.outcome) for a in stored] == [
        ("a.png", "image/png", "used"),
        ("b.txt", "text/plain", "used"),
    ]
    assert stored[1].sha256 == hashlib.sha256(b"hello").hexdigest()
    runner.close()


# The console -------------------------------------------------------------------------------------------------


async def test_console_shares_attached_files_and_writes_files_a_reply_posts(
    storage: Storage, items_db: Path, tmp_path: Path
) -> None:
    attached = tmp_path / "notes.txt"
    attached.write_bytes(NOTES)
    agent, runner, engine = make_agent(storage, items_db, vision=False)
    out = io.StringIO()
    console = ConsoleAdapter(
        channel="team",
        stdin=io.StringIO("what does it say?\nlist all items\n"),
        stdout=out,
        attach=[attached],
        files_dir=tmp_path / "out",
    )
    async with Dispatcher(storage, agent, [console], DispatchOptions(rate_limit=None)) as dispatcher:
        await console.run(Handlers(dispatcher.submit, dispatcher.decide))
        await dispatcher.join()
    runner.close()
    assert "The launch is planned for March 3." in request_text(engine.requests[0])
    written = tmp_path / "out" / "query-result.csv"
    assert f"(file written to {written})" in out.getvalue()
    assert written.read_text().splitlines()[-1] == f"{ROWS},item-{ROWS}"


def test_write_files_never_overwrites(tmp_path: Path) -> None:
    outbox = Outbox()
    outbox.post_file("../../etc/result.csv", b"1")
    first = write_files(Reply("x", files=outbox.files), tmp_path)
    second = write_files(Reply("x", files=outbox.files), tmp_path)
    assert [p.name for p in first + second] == ["result.csv", "result-2.csv"]
    assert all(p.parent == tmp_path for p in first + second)


async def test_a_local_file_over_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_bytes(b"x" * 2000)
    [local] = local_attachments([path])
    assert local.size == 2000 and local.url == path.absolute().as_uri()
    notes = (await read_attachments([local], Limits(max_bytes=1000))).notes(vision=False)
    assert notes == ["I couldn't read big.log: it is 2.0 kB, over the 1.0 kB limit."]


def test_an_outbox_is_bounded_and_names_files_uniquely() -> None:
    outbox = Outbox(max_bytes=10)
    assert outbox.post_file("a.csv", b"12345") == "a.csv"
    assert outbox.post_file("a.csv", b"12345") == "a.csv"  # the same content once
    assert outbox.post_file("a.csv", b"abc") == "a-2.csv"
    assert outbox.post_file("b.csv", b"too much") is None
    assert [f.name for f in outbox.files] == ["a.csv", "a-2.csv"]


@pytest.mark.slow
def test_parley_ask_and_chat_share_attached_files_with_the_model(tmp_path: Path) -> None:
    from tests.fakes.openai_server import FakeOpenAI
    from tests.test_cli import fake_env, parley

    notes = tmp_path / "notes.txt"
    notes.write_bytes(NOTES)
    with FakeOpenAI() as fake:
        env = fake_env(tmp_path, fake)
        asked = parley(["ask", "what does the file say?", "--attach", str(notes)], env)
        assert asked.returncode == 0, asked.stderr
        assert "The launch is planned for March 3." in fake.prompts()[-1]
        chatted = parley(["chat", "--attach", str(notes)], env, "summarise it\n")
        assert chatted.returncode == 0, chatted.stderr
        assert 'file "notes.txt"' in fake.prompts()[-1]
    missing = parley(["ask", "q", "--attach", str(tmp_path / "nope.txt")], env)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


async def test_a_download_is_cut_off_at_the_limit_and_only_goes_to_allowed_hosts() -> None:
    import aiohttp
    from yarl import URL

    from adapters.files import download, same_origin
    from tests.fakes.http_server import huge

    async with FakeHTTPServer() as server, aiohttp.ClientSession() as session:
        server.on("/stream", huge(5_000_000))  # no Content-Length: only counting stops it
        server.on("/small", text("hello"))
        mine = URL(server.url)

        def allowed(url: URL) -> bool:
            return same_origin(url, mine)

        with pytest.raises(AttachmentRefused, match="larger than the 100,000-byte limit"):
            await download(session, f"{server.url}/stream", 100_000, platform="Slack", allowed=allowed)
        assert await download(session, f"{server.url}/small", 100, platform="Slack", allowed=allowed) == b"hello"
        with pytest.raises(AttachmentRefused, match="not on Slack's own file servers"):
            await download(session, "https://elsewhere.example/x", 100, platform="Slack", allowed=allowed)
        assert server.hits("/small") == 1
