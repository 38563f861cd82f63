"""seq2seq-serve: a real server on localhost and a real HTTP client. Concurrent clients get
exactly their own translations, equal to Translator's; bad requests get a 4xx naming the field,
and the server goes on answering."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")


def start(copy_model):
    """A server on a free localhost port in a thread: (url, translator, server, thread)."""
    from infer.serve import Limits, create_app
    from infer.translator import Translator
    from seq2seq.tokenizer import Tokenizer, Vocabularies

    tok = Tokenizer.placeholder(12)
    translator = Translator(copy_model, Vocabularies(tok, tok), "cpu", "fp32")
    app = create_app(translator, Limits(max_sentences=8, max_chars=60, batch_wait_ms=20))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    port = srv.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", translator, srv, thread


@pytest.fixture(scope="module")
def server(copy_model):
    url, translator, srv, thread = start(copy_model)
    yield url, translator
    srv.should_exit = True
    thread.join(10)


def lines(seed: int, n: int = 3) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(f"t{rng.randint(4, 11)}" for _ in range(rng.randint(1, 6))) for _ in range(n)]


def test_concurrent_clients_get_their_own_translations(server):
    url, translator = server
    requests = [(lines(i, 1 + i % 4), {"beam_size": 1 + i % 3}) for i in range(24)]

    def call(req):
        sentences, options = req
        with httpx.Client(timeout=60) as client:
            r = client.post(f"{url}/translate", json={"sentences": sentences, **options})
        return r.status_code, r.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, requests))
    for (sentences, options), (status, body) in zip(requests, answers):
        assert status == 200 and body["translations"] == translator.translate(sentences, **options)


def test_n_best_prefix_and_sampling_through_the_api(server):
    url, translator = server
    with httpx.Client(timeout=60) as client:
        r = client.post(f"{url}/translate", json={"sentences": ["t4 t5 t6"], "beam_size": 3, "n_best": 2})
        assert [h["text"] for h in r.json()["translations"][0]] == [t for t, _ in translator.translate(["t4 t5 t6"], beam_size=3, n_best=2)[0]]
        r = client.post(f"{url}/translate", json={"sentences": ["t4 t5 t6"], "prefixes": ["t9"]})
        assert r.json()["translations"][0].startswith("t9")
        r = client.post(f"{url}/translate", json={"sentences": ["t4 t5"], "sample": True, "top_k": 1, "n_best": 2})
        assert [h["text"] for h in r.json()["translations"][0]] == [translator.translate(["t4 t5"], greedy=True)[0]] * 2
        health = client.get(f"{url}/health").json()
        assert health["status"] == "ok" and health["tgt_vocab_size"] == 12 and health["device"] == "cpu"
        assert health["dtype"] == "fp32"


@pytest.mark.parametrize("payload, field", [
    ('{"sentences": ["t4"', "body"),  # malformed JSON
    ({"sentences": "t4 t5"}, "sentences"),  # wrong type
    ({"sentences": []}, "sentences"),  # empty
    ({"sentences": ["t4"] * 9}, "sentences"),  # more than max_sentences
    ({"sentences": ["t4 " * 30]}, "sentences"),  # a line over max_chars
    ({"sentences": ["t4"], "beam": 4}, "beam"),  # an unknown option
    ({"sentences": ["t4"], "beam_size": 0}, "beam_size"),
    ({"sentences": ["t4"], "top_p": 1.5}, "top_p"),
    ({"sentences": ["t4", "t5"], "prefixes": ["t6"]}, "prefixes"),
    ({"sentences": ["t4"], "beam_size": 2, "n_best": 3}, "n_best"),
])
def test_bad_requests_get_a_4xx_naming_the_field_and_the_server_goes_on(server, payload, field):
    url, translator = server
    with httpx.Client(timeout=60) as client:
        if isinstance(payload, str):
            r = client.post(f"{url}/translate", content=payload, headers={"content-type": "application/json"})
        else:
            r = client.post(f"{url}/translate", json=payload)
        assert 400 <= r.status_code < 500 and r.json()["error"].startswith(field)
        ok = client.post(f"{url}/translate", json={"sentences": ["t4 t5"]})
        assert ok.status_code == 200 and ok.json()["translations"] == translator.translate(["t4 t5"])


def test_a_request_that_fails_in_the_engine_fails_alone(server, monkeypatch):
    url, translator = server
    real = translator.translate

    def fragile(lines, **kwargs):
        if any("t11 t11 t11" in line for line in lines):
            raise RuntimeError("boom")
        return real(lines, **kwargs)

    monkeypatch.setattr(translator, "translate", fragile)

    def call(sentences):
        with httpx.Client(timeout=60) as client:
            return client.post(f"{url}/translate", json={"sentences": sentences})

    with ThreadPoolExecutor(4) as pool:
        bad, *good = pool.map(call, [["t11 t11 t11"], ["t4"], ["t5 t6"], ["t7"]])
    assert bad.status_code == 500 and "boom" in bad.json()["error"]
    assert [r.json()["translations"] for r in good] == [real(["t4"]), real(["t5 t6"]), real(["t7"])]


def test_shutdown_finishes_the_requests_in_flight(copy_model):
    url, translator, srv, thread = start(copy_model)
    real = translator.translate

    def slow(lines, **kwargs):
        time.sleep(1.0)
        return real(lines, **kwargs)

    translator.translate = slow
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"{url}/translate", json={"sentences": ["t4 t5"]}, timeout=30)
        time.sleep(0.3)  # the request is inside the engine
        srv.should_exit = True
        answer = pending.result()
    thread.join(10)
    assert answer.status_code == 200 and answer.json()["translations"] == real(["t4 t5"])
    assert not thread.is_alive()
