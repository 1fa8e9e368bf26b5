"""The chat template of the Llama 4 Instruct models (Scout, Maverick).

Kept apart from chat_templates.py for its length. The text is the one transformers'
``convert_llama4_weights_to_hf.py`` writes for ``--instruct`` (commit 074975050c71 of
huggingface/transformers, ``write_tokenizer``), the script that makes Meta's release into Hugging
Face files; transformers ships the same text as ``Llama4Processor``'s default (its
``processing_llama4.py``), which tests/test_tokenizer_llama4.py compares this copy with. The
published ``meta-llama/Llama-4-Scout-17B-16E-Instruct`` files themselves could not be read here:
sglang's ``llama-4`` template names its ``chat_template.json`` as its reference and renders the
same turns (``<|header_start|>{role}<|header_end|>\\n\\n{content}<|eot|>``).

What it does, for review: BOS; a system message (if any) first, trimmed; tools, if given, in the
first user message (``tools_in_user_message``, default true) or the system message; each message
as ``<|header_start|>{role}<|header_end|>\\n\\n{content}<|eot|>`` with images as ``<|image|>``;
tool calls inside ``<|python_start|>...<|python_end|>`` then JSON; tool results under the role
``ipython``; the assistant header for ``add_generation_prompt``. ``date_string`` is set but not
used (left from LLaMA 3.1's template).
"""

from __future__ import annotations

CHAT_TEMPLATE_LLAMA4 = (
    "{{- bos_token }}\n"
    "{%- if custom_tools is defined %}\n"
    "    {%- set tools = custom_tools %}\n"
    "{%- endif %}\n"
    "{%- if not tools_in_user_message is defined %}\n"
    "    {%- set tools_in_user_message = true %}\n"
    "{%- endif %}\n"
    "{%- if not date_string is defined %}\n"
    "    {%- if strftime_now is defined %}\n"
    '        {%- set date_string = strftime_now("%d %b %Y") %}\n'
    "    {%- else %}\n"
    '        {%- set date_string = "26 Jul 2024" %}\n'
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- if not tools is defined %}\n"
    "    {%- set tools = none %}\n"
    "{%- endif %}\n"
    "\n"
    "{#- This block extracts the system message, so we can slot it into the right place. #}\n"
    "{%- if messages[0]['role'] == 'system' %}    \n"
    "    {%- if messages[0]['content'] is string %}\n"
    "        {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- else %}\n"
    "        {#- FIXME: The processor requires an array, always. #}\n"
    "        {%- set system_message = messages[0]['content'][0]['text']|trim %}\n"
    "    {%- endif %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "    {%- set user_supplied_system_message = true %}\n"
    "{%- else %}\n"
    '    {%- set system_message = "" %}\n'
    "    {%- set user_supplied_system_message = false %}\n"
    "{%- endif %}\n"
    "\n"
    "{#- System message if the user supplied one #}\n"
    "{%- if user_supplied_system_message %}\n"
    '    {{- "<|header_start|>system<|header_end|>\n'
    "\n"
    '" }}\n'
    "    {%- if tools is not none %}\n"
    '        {{- "Environment: ipython\n'
    '" }}\n'
    "    {%- endif %}\n"
    "    {%- if tools is not none and not tools_in_user_message %}\n"
    '        {{- "You have access to the following functions. To call a'
    ' function, please respond with JSON for a function call." }}\n'
    '        {{- \'Respond in the format {"name": function name,'
    ' "parameters": dictionary of argument name and its value}.\' }}\n'
    '        {{- "Do not use variables.\n'
    "\n"
    '" }}\n'
    "        {%- for t in tools %}\n"
    "            {{- t | tojson(indent=4) }}\n"
    '            {{- "\n'
    "\n"
    '" }}\n'
    "        {%- endfor %}\n"
    "    {%- endif %}\n"
    "    {{- system_message }}\n"
    '    {{- "<|eot|>" }}\n'
    "{%- endif %}\n"
    "\n"
    "{#- Custom tools are passed in a user message with some extra guidance #}\n"
    "{%- if tools_in_user_message and not tools is none %}\n"
    "    {#- Extract the first user message so we can plug it in here #}\n"
    "    {%- if messages | length != 0 %}\n"
    "        {%- set first_user_message = messages[0]['content']|trim %}\n"
    "        {%- set messages = messages[1:] %}\n"
    "    {%- else %}\n"
    '        {{- raise_exception("Cannot put tools in the first user'
    ' message when there\'s no first user message!") }}\n'
    "{%- endif %}\n"
    "    {{- '<|header_start|>user<|header_end|>\n"
    "\n"
    "' -}}\n"
    '    {{- "Given the following functions, please respond with a JSON for a function call " }}\n'
    '    {{- "with its proper arguments that best answers the given prompt.\n'
    "\n"
    '" }}\n'
    '    {{- \'Respond in the format {"name": function name, "parameters":'
    " dictionary of argument name and its value}.' }}\n"
    '    {{- "Do not use variables.\n'
    "\n"
    '" }}\n'
    "    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n"
    '        {{- "\n'
    "\n"
    '" }}\n'
    "    {%- endfor %}\n"
    '    {{- first_user_message + "<|eot|>"}}\n'
    "{%- endif %}\n"
    "\n"
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'ipython' or message.role == 'tool'"
    " or 'tool_calls' in message) %}\n"
    "    {{- '<|header_start|>' + message['role'] + '<|header_end|>\n"
    "\n"
    "' }}\n"
    "        {%- if message['content'] is string %}\n"
    "            {{- message['content'] }}\n"
    "        {%- else %}\n"
    "            {%- for content in message['content'] %}\n"
    "                {%- if content['type'] == 'image' %}\n"
    "                    {{- '<|image|>' }}\n"
    "                {%- elif content['type'] == 'text' %}\n"
    "                    {{- content['text'] }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    '        {{- "<|eot|>" }}\n'
    "    {%- elif 'tool_calls' in message and message.tool_calls|length > 0 %}\n"
    "       {{- '<|header_start|>assistant<|header_end|>\n"
    "\n"
    "' -}}\n"
    "       {{- '<|python_start|>' }}\n"
    "        {%- if message['content'] is string %}\n"
    "            {{- message['content'] }}\n"
    "        {%- else %}\n"
    "            {%- for content in message['content'] %}\n"
    "                {%- if content['type'] == 'image' %}\n"
    "                    {{- '<|image|>' }}\n"
    "                {%- elif content['type'] == 'text' %}\n"
    "                    {{- content['text'] }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "       {{- '<|python_end|>' }}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    '           {{- \'{"name": "\' + tool_call.function.name + \'", \' }}\n'
    '           {{- \'"parameters": \' }}\n'
    "           {{- tool_call.function.arguments | tojson }}\n"
    '           {{- "}" }}\n'
    "        {%- endfor %}\n"
    '       {{- "<|eot|>" }}\n'
    '    {%- elif message.role == "tool" or message.role == "ipython" %}\n'
    '        {{- "<|header_start|>ipython<|header_end|>\n'
    "\n"
    '" }}\n'
    "        {%- if message.content is mapping or message.content is iterable %}\n"
    "            {{- message.content | tojson }}\n"
    "        {%- else %}\n"
    "            {{- message.content }}\n"
    "        {%- endif %}\n"
    '        {{- "<|eot|>" }}\n'
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|header_start|>assistant<|header_end|>\n"
    "\n"
    "' }}\n"
    "{%- endif %}\n"
)
