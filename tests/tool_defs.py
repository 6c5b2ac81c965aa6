"""Tools and a chat template for the tool-calling tests (test_structured_tools.py, test_structured_e2e.py)."""

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


NOW = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}


TOOLS = [ADD, NOW]


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
