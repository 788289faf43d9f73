"""Prompts: the exact Llama-2 chat format of the released models, templates rendered as
transformers renders them, and doc-level truncation that keeps the template whole."""

from __future__ import annotations

import json
import shutil

import pytest

from proxkit.chunking import chunk_documents
from proxkit.prompts import SYSTEM_MESSAGE, chunk_prompts, doc_prompts, llama2_chat, render_chat
from proxkit.tokenizer import TokenizerNotFound, load_tokenizer

# The Llama-2 chat template in Jinja, as the Llama-2 chat tokenizers publish it.
LLAMA2_JINJA = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
CHATML_JINJA = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_llama2_format_exactly():
    assert llama2_chat("Some document.\n\n") == (
        "<s>[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant.\n<</SYS>>\n\n"
        "Some document. [/INST]"
    )


@pytest.mark.parametrize(
    "user", ["plain", "  leading and trailing  \n", "[doc]\n[000]x\n[/doc]", ""]
)
def test_llama2_format_equals_transformers_rendering_of_the_llama2_template(llama2_dir, user):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(llama2_dir))
    messages = [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": user}]
    expected = hf.apply_chat_template(
        messages, chat_template=LLAMA2_JINJA, tokenize=False, add_generation_prompt=True
    )
    assert render_chat(load_tokenizer(str(llama2_dir)), user) == expected


def test_a_tokenizer_with_its_own_template_is_rendered_like_transformers(
    tiny_tokenizer_dir, tmp_path
):
    from transformers import AutoTokenizer

    folder = tmp_path / "chatml"
    shutil.copytree(tiny_tokenizer_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = CHATML_JINJA
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    hf = AutoTokenizer.from_pretrained(str(folder))
    messages = [
        {"role": "system", "content": SYSTEM_MESSAGE},
        {"role": "user", "content": "doc text"},
    ]
    expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_chat(load_tokenizer(str(folder)), "doc text") == expected


def test_chunk_prompt_is_the_wrapped_chunk_and_starts_with_one_bos(llama2_dir):
    tokenizer = load_tokenizer(str(llama2_dir))
    chunks = chunk_documents(["Menu\nReal text here."], tokenizer.backend)[0]
    (prompt,) = chunk_prompts(chunks, tokenizer)
    assert prompt.text == llama2_chat("[doc]\n[000]Menu\n[001]Real text here.\n[/doc]")
    assert prompt.token_ids[:2] == (1, 518)  # one BOS, then "▁["
    assert prompt.token_ids.count(1) == 1


def test_long_documents_are_cut_and_the_template_kept(llama2_dir):
    tokenizer = load_tokenizer(str(llama2_dir))
    long_doc = "A sentence of web text, repeated.\n" * 800
    short, cut = doc_prompts(["short document", long_doc], tokenizer, max_tokens=2000)
    assert not short.truncated and short.text == llama2_chat("short document")
    assert cut.truncated and len(cut.token_ids) <= 2000 and len(cut.token_ids) >= 1990
    assert cut.text.endswith(" [/INST]")
    assert list(cut.token_ids) == tokenizer.backend.encode(cut.text, add_special_tokens=False).ids
    assert long_doc.startswith(cut.text.split("<</SYS>>\n\n")[1].removesuffix(" [/INST]"))


def test_reference_truncation_cuts_the_whole_prompt(llama2_dir):
    tokenizer = load_tokenizer(str(llama2_dir))
    (cut,) = doc_prompts(["word " * 3000], tokenizer, max_tokens=2000, truncation="reference")
    assert len(cut.token_ids) == 2000 and cut.truncated
    assert "[/INST]" not in cut.text


def test_missing_tokenizer_says_how_to_pass_a_local_folder(tmp_path):
    with pytest.raises(TokenizerNotFound, match="not a folder"):
        load_tokenizer(str(tmp_path / "nope"))
