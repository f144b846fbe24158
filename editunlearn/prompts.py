"""Prompt formatting shared by evaluation and every method, so edits hit exactly the evaluated prompt."""

from __future__ import annotations

PLAIN_TEMPLATE = "Question: {question}\nAnswer:"


def format_prompt(tokenizer, question: str, chat_template: bool = True,
                  system_prompt: str | None = None) -> str:
    """The text the model sees before its answer.

    With ``chat_template`` the tokenizer's template is applied with the generation prompt (a
    ``system_prompt`` of None keeps the template's own default system message). Without, a plain
    "Question: ... Answer:" frame is used (base models with no template).
    """
    if chat_template:
        messages = [{"role": "user", "content": question}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return PLAIN_TEMPLATE.format(question=question)


def prompt_ids(tokenizer, prompt: str, chat_template: bool = True) -> list[int]:
    # a chat template writes its own BOS into the text; a plain prompt needs the tokenizer's
    return tokenizer(prompt, add_special_tokens=not chat_template)["input_ids"]


def answer_ids(tokenizer, answer: str) -> list[int]:
    """Answer tokens as they follow the prompt (tokenised alone, so the prompt/answer boundary is
    exact for teacher forcing and for training losses)."""
    return tokenizer(answer, add_special_tokens=False)["input_ids"]


class PromptFormatter:
    """Binds a model's prompt settings; methods receive one of these."""

    def __init__(self, tokenizer, chat_template: bool = True, system_prompt: str | None = None):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.system_prompt = system_prompt

    def __call__(self, question: str) -> str:
        return format_prompt(self.tokenizer, question, self.chat_template, self.system_prompt)

    def prompt_ids(self, question: str) -> list[int]:
        return prompt_ids(self.tokenizer, self(question), self.chat_template)

    def qa_ids(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids); concatenate them for teacher forcing."""
        return self.prompt_ids(question), answer_ids(self.tokenizer, answer)
