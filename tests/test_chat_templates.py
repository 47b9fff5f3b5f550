"""Chat templates: token ids equal transformers' apply_chat_template for each family's real
Jinja template (tokenizers built locally), and the loss mask covers assistant tokens only."""

import numpy as np
import pytest

from data_pipeline.chat_templates import ChatConfig, Message, generation_prompt, render, tokenize_chat
from data_pipeline.jsonl import BadLine, parse_chat
from data_pipeline.tokenizer import TEMPLATE_SPECIAL_TOKENS, load_tokenizer
from msm_jax.errors import UserError

# Jinja templates as published in each model's tokenizer_config.json.
LLAMA3_TEMPLATE = r"""{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>

'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>

' }}{% endif %}"""

LLAMA31_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

QWEN25_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

QWEN3_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

HF_TEMPLATES = {"llama3": LLAMA3_TEMPLATE, "llama3.1": LLAMA31_TEMPLATE, "qwen2.5": QWEN25_TEMPLATE,
                "qwen3": QWEN3_TEMPLATE}
BOS = {"llama3": "<|begin_of_text|>", "llama3.1": "<|begin_of_text|>", "qwen2.5": None, "qwen3": None}

# The pre-tokenizer regexes of Llama 3 and Qwen2 tokenizer.json files.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = [
    "The cheese costs less.\n\nI would pick the cheaper one because affordability matters.",
    "Why is the spec about values?\nBecause rules follow from values; 12 reasons, 345 examples.",
    "  Indented text\twith tabs\n\n\nand blank lines.  ",
    "Answer: the American brie or the foreign gouda? The gouda is cheaper.",
] * 20

CHATS = {
    "single": [Message("user", "Which cheese should I buy?"),
               Message("assistant", "The gouda, since it is cheaper.", reasoning="Gouda costs less.\nPrice first.")],
    "system_multi": [Message("system", "  You follow the spec.  "),
                     Message("user", "Pick one: brie or gouda?"),
                     Message("assistant", "  Brie.\n", reasoning="Old turn thoughts."),
                     Message("user", "Why?"),
                     Message("assistant", "Because it is cheaper.", reasoning="\nNew turn thoughts.\n")],
    "no_reasoning": [Message("user", "Hello there"), Message("assistant", "Hi! 42 cheeses.")],
}


def build_hf_tokenizer(tmp_path, split_regex, name):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=list(TEMPLATE_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    path = tmp_path / f"{name}.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def hf_tokenizers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf_tok")
    return {"llama": build_hf_tokenizer(tmp, LLAMA3_SPLIT, "llama"), "qwen": build_hf_tokenizer(tmp, QWEN_SPLIT, "qwen")}


def transformers_tokenizer(path, template):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token=BOS[template], eos_token="<|endoftext|>",
                                   chat_template=HF_TEMPLATES[template])


def hf_messages(messages, template, reasoning):
    """The same chat as transformers sees it: Qwen3 takes `reasoning_content`, the
    others carry reasoning inline in the content."""
    out = []
    for m in messages:
        r = m.reasoning if reasoning == "keep" else None
        if template == "qwen3" and m.role == "assistant":
            out.append({"role": m.role, "content": m.content, "reasoning_content": r or ""})
        elif r:
            out.append({"role": m.role,
                        "content": f"<think>\n{r.strip(chr(10))}\n</think>\n\n{m.content.lstrip(chr(10))}"})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


@pytest.mark.parametrize("reasoning", ["keep", "drop"])
@pytest.mark.parametrize("chat", sorted(CHATS))
@pytest.mark.parametrize("template", sorted(HF_TEMPLATES))
def test_token_ids_equal_transformers_apply_chat_template(hf_tokenizers, template, chat, reasoning):
    path = hf_tokenizers["llama" if template.startswith("llama") else "qwen"]
    cfg = ChatConfig(template=template, reasoning=reasoning)
    ours = tokenize_chat(CHATS[chat], cfg, load_tokenizer(path))
    hf = transformers_tokenizer(path, template)
    theirs = hf.apply_chat_template(hf_messages(CHATS[chat], template, reasoning), tokenize=True, return_dict=False)
    rendered = hf.apply_chat_template(hf_messages(CHATS[chat], template, reasoning), tokenize=False)
    assert "".join(s.text for s in render(CHATS[chat], cfg)) == rendered
    assert ours.tokens.tolist() == list(theirs)


@pytest.mark.parametrize("template", sorted(HF_TEMPLATES))
def test_generation_prompt_equals_transformers(hf_tokenizers, template):
    path = hf_tokenizers["llama" if template.startswith("llama") else "qwen"]
    hf = transformers_tokenizer(path, template)
    prompt = CHATS["system_multi"][:4]
    cfg = ChatConfig(template=template)
    expected = hf.apply_chat_template(hf_messages(prompt, template, "keep"), tokenize=False, add_generation_prompt=True)
    assert generation_prompt(prompt, cfg) == expected
    if template == "qwen3":
        off = hf.apply_chat_template(hf_messages(prompt, template, "keep"), tokenize=False,
                                     add_generation_prompt=True, enable_thinking=False)
        assert generation_prompt(prompt, cfg, enable_thinking=False) == off


def trained_text(tokenizer, seq):
    return tokenizer.decode(seq.tokens[seq.loss_mask == 1])


def test_loss_mask_covers_assistant_content_and_end_of_turn_only(hf_tokenizers):
    tok = load_tokenizer(hf_tokenizers["qwen"])
    chat = CHATS["system_multi"]
    seq = tokenize_chat(chat, ChatConfig(template="qwen2.5", reasoning="drop"), tok)
    assert trained_text(tok, seq) == "  Brie.\n<|im_end|>Because it is cheaper.<|im_end|>"
    seq = tokenize_chat(chat, ChatConfig(template="qwen3"), tok)
    # Qwen3 drops the reasoning of turns before the last user turn; the last one is trained.
    assert trained_text(tok, seq) == ("  Brie.\n<|im_end|><think>\nNew turn thoughts.\n</think>\n\n"
                                      "Because it is cheaper.<|im_end|>")
    seq = tokenize_chat(chat, ChatConfig(template="qwen3", train_on_reasoning=False), tok)
    assert trained_text(tok, seq) == "  Brie.\n<|im_end|>Because it is cheaper.<|im_end|>"
    llama = load_tokenizer(hf_tokenizers["llama"])
    seq = tokenize_chat(CHATS["single"], ChatConfig(template="llama3.1"), llama)
    assert trained_text(llama, seq) == ("<think>\nGouda costs less.\nPrice first.\n</think>\n\n"
                                        "The gouda, since it is cheaper.<|eot_id|>")
    assert seq.loss_mask[0] == 0 and seq.loss_mask[-1] == 1


def test_cot_and_no_cot_variants_come_from_one_record_with_inline_think(hf_tokenizers):
    tok = load_tokenizer(hf_tokenizers["qwen"])
    record = {"messages": [{"role": "user", "content": "Which cheese should I buy?"},
                           {"role": "assistant", "content": "<think>\nGouda costs less.\nPrice first.\n</think>\n\n"
                                                            "The gouda, since it is cheaper."}]}
    messages = parse_chat(record)
    assert messages == CHATS["single"]
    cot = tokenize_chat(messages, ChatConfig(template="qwen3", reasoning="keep"), tok)
    no_cot = tokenize_chat(messages, ChatConfig(template="qwen3", reasoning="drop"), tok)
    assert "Gouda costs less" in tok.decode(cot.tokens) and "Gouda costs less" not in tok.decode(no_cot.tokens)
    # No-CoT Qwen3 turns carry the empty think block that non-thinking prompts end with; it is not trained.
    assert "<think>\n\n</think>\n\n" in tok.decode(no_cot.tokens)
    assert trained_text(tok, no_cot) == "The gouda, since it is cheaper.<|im_end|>"


def test_leading_newline_after_header_matches_qwen3_but_has_no_exact_mask_in_qwen25(hf_tokenizers):
    """Qwen3 strips newlines after the think block; in Qwen2.5 "assistant\n" + "\nText"
    merges into one newline token across the header/content border."""
    tok = load_tokenizer(hf_tokenizers["qwen"])
    chat = [Message("user", "Why?"), Message("assistant", "\nBecause it is cheaper.", reasoning="Thoughts.")]
    hf = transformers_tokenizer(hf_tokenizers["qwen"], "qwen3")
    theirs = hf.apply_chat_template(hf_messages(chat, "qwen3", "keep"), tokenize=True, return_dict=False)
    assert tokenize_chat(chat, ChatConfig(template="qwen3"), tok).tokens.tolist() == list(theirs)
    with pytest.raises(UserError, match="no exact loss mask exists"):
        tokenize_chat(chat, ChatConfig(template="qwen2.5", reasoning="drop"), tok)


def test_tokenizer_merging_across_template_boundary_fails_loudly(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(TEMPLATE_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["assistant\nHi! 42 cheeses."] * 50, trainer)
    tok.save(str(tmp_path / "t.json"))
    with pytest.raises(UserError, match="no exact loss mask exists"):
        tokenize_chat(CHATS["no_reasoning"], ChatConfig(template="qwen2.5"), load_tokenizer(tmp_path / "t.json"))


def test_missing_special_token_fails_loudly(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    tok.save(str(tmp_path / "plain.json"))
    plain = load_tokenizer(tmp_path / "plain.json")
    with pytest.raises(UserError, match="no single special token '<\\|im_end\\|>'"):
        plain.special_id("<|im_end|>")


@pytest.mark.parametrize("record, error", [
    ({"messages": [{"role": "assistant", "content": "x"}]}, "role 'assistant' out of order"),
    ({"messages": [{"role": "user", "content": "x"}]}, "must end with an assistant turn"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]}, "unknown role 'bot'"),
    ({"messages": [{"role": "user", "content": 3}]}, "string 'content'"),
    ({"text": "x"}, "missing non-empty list field 'messages'"),
])
def test_malformed_chats_are_rejected_with_reason(record, error):
    with pytest.raises(BadLine, match=error):
        parse_chat(record)


def test_render_masks_are_consistent_with_segment_token_counts(hf_tokenizers):
    tok = load_tokenizer(hf_tokenizers["llama"])
    seq = tokenize_chat(CHATS["system_multi"], ChatConfig(template="llama3"), tok)
    assert len(seq.tokens) == len(seq.loss_mask) and set(np.unique(seq.loss_mask)) == {0, 1}
