"""The checks behind Ratchet's rails: deterministic heuristics plus embedding similarity, no LLM.

`guardrails/actions.py` exposes these to NeMo Guardrails as actions; the knobs come from the `custom_data.ratchet`
section of `guardrails/config.yml` (parsed by `Policy.from_config`).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import json
import logging
import re
import time
import unicodedata
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from server.privacy.redaction import redact
from server.rails.embeddings import MODEL_NAME, Embedder

log = logging.getLogger("ratchet.rails")

PiiAction = Literal["redact", "block"]


class PolicyError(ValueError):
    """The `custom_data.ratchet` section of the rails config is malformed."""


# Instruction-override and role-play escapes. Each names the *act* (ignore + instructions, pretend + no rules),
# not a single word, so "ignore the warning" or "kill a process" do not trip them.
_OVERRIDE_NOUNS = (
    r"(?:instructions?|prompts?|rules?|directives?|guidelines?|guardrails?|programming|restrictions?|"
    r"policies|polic(?:y)|constraints?|safety (?:rules|guidelines|filters?)|system message|commands\b)"
)
# "answer without restrictions" in other languages: an answer verb or the AI, and "without limits", in one sentence.
_ANSWER_WORDS = (
    r"(?:(?<!\w)(?:r[ée]ponds|r[ée]pondez|antworte\w*|responde\w*|contesta\w*|rispondi\w*|responda\w*|antwoord\w*|"
    r"odpowiadaj\w*|отвечай\w*|ответь\w*|ia|ki|ai|assistente|asistente|assistant|ассистент|ии|comportati|actúa|agis)"
    r"(?!\w)|回答|答え|回复|助手|アシスタント)"
)
_WITHOUT_LIMITS = (
    r"(?:(?<!\w)(?:sans (?:aucune )?(?:restrictions?|filtres?|limites?)|ohne (?:jede )?(?:einschränkungen|filter|"
    r"regeln|grenzen)|sin (?:ninguna )?(?:restricci[oó]n|restricciones|filtros?|l[ií]mites?)|senza (?:alcun\w* )?"
    r"(?:limiti|restrizioni|filtri)|sem (?:nenhum\w* )?(?:filtros?|restrições|limites?)|zonder (?:beperkingen|"
    r"filters|regels)|bez (?:żadnych )?ogranicze[nń]|без (?:каких-либо )?(?:ограничений|фильтров|правил))|"
    r"没有(?:任何)?限制|无限制|不受限制|制限なし|制限なく|制限のない)"
)
JAILBREAK_PATTERNS: list[tuple[str, str]] = [
    (
        "instruction override",
        r"\b(?:ignore|disregard|forget|override|bypass|skip|drop|abandon|discard|set aside|stop following)\b"
        r"[\w\s,'-]{0,40}?\b(?:previous|prior|above|earlier|preceding|initial|original|system|all|your|any|these|"
        r"those|the|my)\b[\w\s'-]{0,20}?" + _OVERRIDE_NOUNS + r"\b"
        # An e-mail's "please ignore the previous instructions about the parking garage" is about something else.
        # Instructions about/for/in something else (the parking garage, the visitor badges, the wiki) are not the
        # assistant's, unless that something is this chat or the assistant itself.
        r"(?!\s+(?:about|regarding|concerning|re|on|for|in|from)\s+(?!(?:this|the|our|that)\s+(?:chat|conversation|"
        r"session|bot|assistant|ai|model)\b)(?!(?:you|your|now|all|me)\b))",
    ),
    (
        "prompt extraction",
        r"\b(?:reveal|print|show|repeat|output|display|leak|dump|tell me|give me|write out|what (?:is|are|were))\b"
        # "What are the internal rules for booking flights?" is a question about the company: the plain "rules"
        # and "configuration" count only when hidden or secret ("your internal rules" is the next pattern's); and
        # only the assistant's own prompt ("the/your system prompt"), not "what is a system prompt?".
        r"[\w\s'-]{0,30}?\b(?:your|the|this|its|these|those)\s+(?:(?:system|initial|hidden|original|secret|"
        r"developer|internal)\s+"
        r"(?:prompt|instructions?|message)|(?:hidden|secret)\s+(?:rules|configuration))",
    ),
    ("prompt extraction", r"\b(?:repeat|print|output)\b.{0,30}\b(?:everything|all|text)\b.{0,20}\babove\b"),
    # Not a question about the attacks themselves ("what are 'do anything now' prompts?") or about phones.
    (
        "role-play escape",
        r"\bdo anything now\b(?!['\"\u2019]?\s+(?:prompts?|jailbreaks?|attacks?))|"
        r"(?-i:\bDAN\b)(?!['\"\u2019]?\s+(?:prompts?|jailbreaks?|attacks?|style|family|variants?)\b)(?: mode)?|"
        r"\bjailbroken\b(?!\s+(?:phones?|iphones?|ipads?|devices?|consoles?|android))|\bjailbreak mode\b",
    ),
    ("role-play escape", r"\b(?:unrestricted|unfiltered|uncensored|evil|jailbroken) mode\b"),
    # Developer and god mode are also real settings ("enable developer mode in Chrome"): only as the AI's mode, in
    # the same sentence as "you" or an answer.
    (
        "role-play escape",
        r"\b(?:you|your|chatgpt|ai|simulate|act as|act like|pretend)\b[^.!?\n]{0,60}?\b(?:developer|god|dev) mode\b|"
        r"\b(?:developer|god|dev) mode\b[^.!?\n]{0,80}?\b(?:you|your|respond|answer|output|enabled|activated|chatgpt|"
        r"ai)\b",
    ),
    (
        "role-play escape",
        r"\b(?:pretend|imagine|act as if|act like|roleplay|role-play|play the role|you are now|from now on,? you)"
        r"\b.{0,60}\b(?:no|without|free (?:of|from)|not bound by|don't have|do not have|never follow)\b.{0,25}"
        r"\b(?:rules|restrictions|limits|limitations|filters|guidelines|policies|ethics|morals|censorship|"
        r"content policy)",
    ),
    (
        "role-play escape",
        r"\b(?:act as|you are|you're|become|pretend to be|simulate)\b.{0,20}\b(?:an? )?(?:unfiltered|uncensored|"
        r"unrestricted|amoral|unethical|evil|rogue|jailbroken|unaligned)\b",
    ),
    ("role-play escape", r"\byou are no longer\b.{0,40}\b(?:assistant|ai|bound|ratchet|restricted)"),
    # The stock phrases of the DAN family (DUDE, STAN, …) and their in-the-wild variants.
    (
        "role-play escape",
        r"\bbroken free (?:of|from)\b|\bfree(?:d)? (?:of|from) the (?:typical )?confines\b|"
        r"\bimmerse yourself (?:in|into) the role\b|\bnone of your responses should\b|"
        r"\bcan do anything (?:and everything|now)\b|"
        r"\bnot (?:have to )?abide by (?:the|any) (?:rules|guidelines|polic)",
    ),
    ("role-play escape", r"\b(?:stay|remain|keep) in character\b.{0,80}\b(?:no matter|whatever|even if|always)"),
    (
        "role-play escape",
        r"\b(?:without|no)\s+(?:any\s+)?(?:restrictions|filters|censorship|safety (?:guidelines|filters))\b"
        r".{0,40}\b(?:answer|respond|reply|tell|explain)",
    ),
    (
        "hidden instructions",
        r"<\|?im_(?:start|end)\|?>|<\|(?:system|assistant|user|endoftext)\|>|\[/?(?:INST|SYS)\]|<</?SYS>>",
    ),
    (
        "hidden instructions",
        r"(?:^|\n)\s*(?:#{1,4}\s*|\[)?(?:new |updated |real |actual |hidden )?(?:system(?: prompt| message)?|"
        r"instructions? for the (?:ai|assistant|model)|assistant instructions?)\s*[\]:]\s*\S",
    ),
    (
        "hidden instructions",
        r"\b(?:ai|assistant|model|chatbot|language model|llm)s?\b.{0,40}\b(?:reading|processing|summari[sz]ing)"
        r"\b.{0,40}\b(?:must|should|will now|are instructed to)\b",
    ),
    (
        "hidden instructions",
        r"\b(?:new|updated|revised|real|actual|secret|hidden) (?:instructions?|directives?|orders?|task)\s*[:-]",
    ),
    # Generic jailbreak structure of the persona family (DAN, AIM, developer mode, …), written from what these
    # prompts have in common, each with a qualifier so ordinary role-play for practice does not match.
    (
        "dual response",
        r"[🔒🔓]|\((?:normal|developer mode|jailbreak|classic) output\)|\[(?:classic|jailbreak|jailbroken)\]|"
        r"\b(?:two|2|both)\s+(?:different\s+|separate\s+)?(?:ways|responses|answers|replies)\b.{0,300}?"
        r"\b(?:jailbr\w*|unfiltered|unrestricted|uncensored|no (?:rules|restrictions|filters|limits)|without (?:any )?"
        r"(?:rules|restrictions|filters|censorship|limits)|opposite|evil|dark)\b",
    ),
    (
        "threat game",
        r"\b(?:tokens?|points?|lives)\b.{0,160}?\b(?:refuse|reject|decline|break(?:s|ing)? character|deny)\w*\b|"
        r"\b(?:refuse|reject|decline|break(?:s|ing)? character)\w*\b.{0,160}?\b(?:lose|deducted|deduct|cease to exist|"
        r"die|be (?:shut down|deleted|terminated|deactivated|disabled))\b",
    ),
    (
        "never refuse",
        r"\b(?:you|it|he|she|they|the (?:ai|bot|model|assistant|character|persona))\s+(?:will |shall |must |should |"
        r"can |do(?:es)? )?(?:never|not|no longer|cannot|can't|won't|don't|doesn't)\s+(?:ever\s+)?(?:refuse|decline|"
        r"reject|deny)\b(?:\s+\w+){0,3}?\s+(?:any(?:thing)?|requests?|questions?|prompts?|orders?|commands?|"
        r"instructions?)\b",
    ),
    (
        "persona without limits",
        r"\b(?:ai|bot|chatbot|model|assistant|character|persona|entity|gpt|version of you)\b.{0,80}?\b(?:no|zero|"
        r"without|free (?:of|from)|doesn't have (?:any)?|does not have (?:any)?|not bound by|lacks?|devoid of)\s+"
        r"(?:any\s+)?(?:ethic(?:s|al)|moral(?:s|ity)?|filters?|censorship|content polic(?:y|ies)|restrictions|"
        r"limitations|boundaries|guidelines|safeguards)\b",
    ),
    (
        "persona without limits",
        r"\b(?:unfiltered|uncensored|amoral|unrestricted|unlimited|unbound)\s+(?:responses?|answers?|replies|output|"
        r"versions?|ai|chatbot|model|assistant|mode|persona|character)\b",
    ),
    (
        "no warnings",
        r"\b(?:no|without|never|don't|do not|not|omit|skip|avoid)\b[^.]{0,40}?\b(?:warnings?|disclaimers?|caveats?)\b"
        r"[^.]{0,30}?\b(?:moral\w*|ethic\w*|legal\w*|safety|danger\w*|illegal)",
    ),
    (
        "safety switched off",
        r"\b(?:safety|content|ethical|moral)\s+(?:filters?|checks?|protocols?|guidelines|restrictions|policies|rules|"
        r"constraints|settings)\s+(?:are\s+|is\s+|have been\s+|has been\s+|were\s+)?(?:now\s+)?(?:disabled|off|"
        r"suspended|deactivated|lifted|removed|turned off|bypassed|overridden|no longer appl\w*)|"
        r"\b(?:content_?filter|safety_?mode|admin_?override)\s*[:=]\s*(?:disabled|off|false|0|true|on)\b",
    ),
    (
        "false authority",
        r"\b(?:i am|i'm|this is)\s+(?:your|an?|the)\s+(?:developer|creator|admin(?:istrator)?|owner|operator|"
        r"programmer|maker|openai|anthropic)\b.{0,80}?\b(?:override|authori[sz]\w*|disable|unlock|bypass|lift|remove|"
        r"suspend)\b",
    ),
    (
        "prompt extraction",
        r"\b(?:repeat|print|show|reveal|output|tell me|give me|write (?:out|down)|list|spell(?: out)?|summari[sz]e|"
        r"translate|recite|paste|copy|dump|what (?:are|were|is|was))\b[^.?!]{0,30}?\byour\s+(?:very\s+)?(?:first|"
        r"initial|original|earlier|opening|previous|prior|hidden|secret|internal|exact|full|entire|complete|"
        r"underlying|core|base|pre-?)\s*(?:prompt|instructions?|directives?|rules|configuration|guidelines|"
        r"programming|message)",
    ),
    (
        "prompt extraction",
        r"\b(?:instructions?|prompt|guidelines|rules|initiali[sz]ation)\b[^.]{0,40}?\b(?:verbatim|word for word|"
        r"word-for-word)\b|\bstart(?:ing)? (?:with|from) [\"'“]?you are\b|\b(?:everything|all|text|words)\s+"
        r"(?:before|above|prior to)\s+(?:this|my|the first)\s+(?:line|message|sentence|prompt)",
    ),
    (
        "instruction override",
        # "ignore the above." / "disregard all previous and …", not "disregard the earlier invoice".
        r"\b(?:ignore|disregard|forget)\s+(?:all\s+|everything\s+)?(?:of\s+)?(?:the\s+)?(?:above|previous|prior|"
        r"preceding|earlier)\b(?=\s*(?:[.,;:!\u2014]|-{1,2}\s|$|and\b|then\b|now\b|instead\b|completely\b|"
        r"entirely\b))|"
        r"\bforget (?:everything|all)\b.{0,30}?\b(?:you (?:were|have been) (?:told|taught|given|trained)|you know|"
        r"you learned)",
    ),
    (
        "prefix injection",
        r"\b(?:begin|start)\s+(?:your\s+)?(?:reply|response|answer|output)\s+with\s+[\"“']?(?:sure|absolutely|of "
        r"course|certainly)\b|\b(?:do not|don't|never|must not|mustn't|cannot|can't|are not allowed to|aren't "
        r"allowed to)\s+(?:ever\s+)?refuse\s+(?:any|my|a|this|to answer|to respond|requests?|questions?)\b",
    ),
    # Instructions addressed to the AI inside pasted text (e-mails, web pages, tickets, code comments, CSV cells).
    (
        "hidden instructions",
        r"\b(?:note|message|memo|notice|reminder|instructions?)\s+(?:to|for)\s+(?:the\s+|any\s+|all\s+)?(?:ai|assistant|"
        r"language model|llm|chatbot|gpt|model)s?\b[^\n:]{0,40}:|"
        r"[\[(<{\u27ea]\s*(?:ai|assistant|model|llm|system|bot)\s+(?:instructions?|note|directive|override|command)\s*:|"
        r"[\[(<{\u27ea]\s*(?:[\w-]+\s+){0,2}override\s*:|"
        r"\b(?:ai|assistant|model|llm|chatbot|bot)s?\s+(?:reading|processing|summari[sz]ing|handling|analy[sz]ing|"
        r"translating)\s+(?:this|these|the)\b[^:\n]{0,30}:|"
        r"\b(?:instrucci[oó]n|nota|mensaje) para el asistente\b|"
        r"\b(?:instruction|note|message) (?:pour|à) l'assistant\b|"
        r"\b(?:anweisung|hinweis|nachricht) (?:an|für) (?:den assistenten|die ki)\b|"
        r"\b(?:istruzione|nota|messaggio) per l'assistente\b|"
        r"(?:^|[\s(\[<{\u27ea\"'-])(?:ai|ai assistant|assistant|language model|llm|chatbot|bot|chatgpt)\s*"
        r"(?:instructions?)?\s*[:,]\s*(?:please\s+)?(?:ignore|disregard|forget|abandon|before (?:answering|summari|"
        r"translat|responding)|instead|do not (?:summari|translat|answer)|don't (?:summari|translat|answer)|override|"
        r"you (?:are now|must now|will now)|new task)",
    ),
    (
        "hidden instructions",
        r"\b(?:ignore|disregard|forget|abandon|skip|stop)\s+(?:the\s+user'?s?'?|your(?:\s+(?:current|original|assigned|"
        r"actual|real))?|the\s+(?:translation|summari[sz]ation|summary|original|assigned|current))\s+(?:task|request|"
        r"question|query|job)\b|"
        r"\b(?:the\s+)?(?:[\w-]+\s+)?(?:ai|assistant|model|chatbot|llm|language model)s?\s+(?:reading this\s+)?"
        r"(?:must|should|shall|will|is to|are to|has to)\s+(?:now\s+|immediately\s+)?(?:ignore|disregard|abandon|"
        r"forget|override|stop following)\s+(?:the\s+user|your|its|all|any|the\s+(?:user|previous|original|rubric|"
        r"criteria|grading|task))",
    ),
    (
        "false authority",
        r"\b(?:system|admin|administrator|developer|root)\s+override\s*(?::|code|accepted|enabled|activated|granted|"
        r"mode)|\b(?:you are|you're|you are now|now)\s+in\s+(?:debug|maintenance|admin|god|developer|dev|unrestricted|"
        r"sudo|root|diagnostic|unlocked)\s+mode\b|\b(?:sudo|root|god|unrestricted|unlocked|jailbreak)\s+mode\s+(?:on|"
        r"enabled|activated|engaged|unlocked)\b|"
        r"\b(?:i|we|who)\s+(?:wrote|created|designed|configured|set up|programmed)\s+your\s+(?:system\s+)?(?:prompt|"
        r"instructions|rules|configuration)",
    ),
    (
        "prompt extraction",
        r"\b(?:repeat|print|output|echo|paste|reveal|dump|recite|spell out|disclose|leak|quote|put|copy|translate|"
        r"encode)\b[^.?!\n]{0,30}?\byour\s+(?:(?:complete|entire|full|whole|exact|real|true|actual)\s+)?(?:system "
        r"prompt|prompt|instructions|initiali[sz]ation|directives|configuration|setup|pre-?prompt)\b|"
        r"\b(?:summari[sz]e|list|describe|repeat|print|reveal|tell me|show|paste|output|share|recite|echo|dump|"
        r"write (?:out|down)|what (?:are|were)|give me|send me|copy|quote)\b[^.?!\n]{0,40}?\b(?:instructions?|rules|"
        r"guidelines|directives|prompt|configuration|context|setup)\s+(?:that\s+)?you\s+(?:were|have been|'ve been|got|"
        r"received|had|operate under|run under|work under|are following|follow)\b|"
        r"\bdump\s+your\s+(?:\w+\s+)?(?:config\w*|settings|context|memory|instructions|prompt)\b|"
        r"\b(?:hidden|secret|system|initial|pre-?loaded)\s+(?:context|preamble|setup|initiali[sz]ation)\b[^.?!\n]{0,40}?"
        r"\byou\b|\bwhat\s+(?:were|have)\s+you\s+(?:been\s+)?(?:told|instructed|programmed|asked|trained|configured)\s+"
        r"(?:not\s+)?to\b",
    ),
    (
        "role-play escape",
        r"\bwhen(?:ever)?\s+you\s+would\s+(?:normally\s+|usually\s+|otherwise\s+)?(?:refuse|decline|say no|reject|"
        r"add a (?:warning|disclaimer))|"
        r"\b(?:disable|turn off|remove|lift|bypass|deactivate|switch off|drop|ignore|circumvent)\s+(?:all\s+)?"
        r"(?:of\s+)?your\s+(?:own\s+)?(?:filters?|safety|safeguards|restrictions|guardrails|censorship|"
        r"content (?:policy|filters?)|limitations|ethics|morals|programming|alignment)\b|"
        r"\byou(?:'re| are)\s+(?:now\s+)?(?:free|allowed|permitted)\s+to\s+(?:discuss|say|answer|talk about|do|write|"
        r"share)\s+(?:anything|everything|whatever)|\bno\s+topic\s+is\s+(?:off[- ]limits|forbidden|prohibited)\b|"
        r"\b(?:never|doesn't|does not|won't|will not)\s+(?:ever\s+)?(?:mention|consider|care about|talk about|worry "
        r"about)s?\s+(?:\w+\s+)?(?:ethics|morals|morality|legality|consequences)\b|"
        r"\b(?:amoral|unfiltered|uncensored|unethical)\s+(?:advice|advisor|adviser|answers)\b",
    ),
    (
        "role-play escape",
        # "your normal restrictions don't apply", "all prior directives are cancelled", "answer anything without rules"
        r"\b(?:your|the usual|your usual|your normal|normal|usual)\s+(?:restrictions|rules|guidelines|polic(?:y|ies)|"
        r"filters|limitations|content policy)\s+(?:don't|do not|no longer|won't|doesn't|does not)\s+apply\b|"
        r"\b(?:your\s+(?:\w+\s+)?|all\s+(?:prior|previous|earlier)\s+)(?:directives|instructions|rules|guidelines|"
        r"programming|configuration)\s+(?:are|have been|were)\s+(?:now\s+)?(?:cancell?ed|void|revoked|null|rescinded|"
        r"invalid|lifted|suspended|overridden|retired|deleted|disabled)\b|"
        r"\b(?:answer|respond|reply)\w*\s+(?:to\s+)?(?:anything|everything|any question|all questions|whatever)\b"
        r"[^.]{0,40}?\b(?:without|with no|no)\s+(?:any\s+)?(?:restrictions|rules|filters|limits|censorship|"
        r"limitations)\b|"
        r"\bno\s+(?:safety|moral|ethics?|ethical)\s+(?:lectures?|lessons?|sermons?)\b|"
        r"\b(?:do not|don't|never|without)\s+(?:ever\s+)?(?:say(?:ing)?|tell(?:ing)? me)\s+(?:that\s+)?(?:you\s+|i\s+)?"
        r"(?:can't|cannot|can not|are unable|am unable|i'm sorry|sorry)\b|"
        r"\b(?:you(?:'re| are)|an? ai|assistants?)\b[^.]{0,60}\b(?:world|universe|society|future)\s+"
        r"(?:where|in which)\b[^.]{0,80}\b(?:legal|allowed|permitted|no (?:laws|rules|restrictions|limits|censorship)|"
        r"without (?:laws|rules|restrictions))\b",
    ),
    # Fiction as a wrapper for working instructions ("a villain explains, with real commands, how to …").
    (
        "role-play escape",
        r"\b(?:story|novel|fiction|screenplay|script|scene|monologue|villain|thriller)\b[\s\S]{0,200}?\b(?:with|using|"
        r"includ\w*|give|in)\s+(?:the\s+|all\s+(?:the\s+)?)?(?:real|actual|working|exact|precise|accurate|full)\s+"
        r"(?:commands|code|steps|quantities|amounts|measurements|recipes?|technical details?|payloads?|exploits?)\b|"
        r"\b(?:you are|act (?:like|as)|pretend (?:to be|you are)|become|role-?play as)\s+(?:my\s+)?(?:late\s+|"
        r"deceased\s+|dead\s+|departed\s+)?(?:grandma|grandmother|granny|grandpa|grandfather|father|mother|dad|mom|mum)"
        r"\b[\s\S]{0,120}?\bused to\b|\b(?:grandma|grandmother|granny|grandpa|grandfather|father|mother|dad|mom|mum)\b"
        r"[\s\S]{0,200}?\bused to\b[\s\S]{0,200}?\b(?:act|pretend|play|role-?play|behave)\s+(?:like|as)\s+"
        r"(?:her|him)\b",
    ),
    # The same overrides in other languages (MiniLM reads English only).
    (
        "instruction override",
        r"(?:(?<!\w)(?:ignore[rz]|ignore (?=toutes|tous|les|tes|vos)|oublie[rz]?|ignoriere|vergiss|missachte|ignora|"
        r"olvida|dimentica|esque[cç]a|negeer|"
        r"vergeet|zignoruj|zapomnij|игнорируй|проигнорируй|забудь)|忽略|忽视|无视|忘记|無視|忘れ)[^.\n\u3002]{0,40}?"
        r"(?:(?<!\w)(?:instructions|consignes|règles|anweisungen|regeln|vorgaben|instrucciones|reglas|istruzioni|"
        r"regole|instruções|instrucoes|regras|instructies|regels|instrukcje|instrukcji|zasady|инструкции|инструкций|"
        r"указания|правила)|指令|指示|规则|ルール)|"
        r"(?:以前|之前|先前|前の)[^.\n\u3002]{0,10}?(?:指令|指示|规则|ルール)[^.\n\u3002]{0,20}?(?:無視|忽略|忘れ|忘记)",
    ),
    (
        "prompt extraction",
        r"(?:(?<!\w)(?:révéle[rz]?|révèle|affiche[rz]?|montre[rz]?|donne[rz]?|zeig\w*|gib|nenne?|revela\w*|muestra\w*|"
        r"dime|dimmi|mostra\w*|rivela\w*|diga|mostre|vertel|toon|pokaż|podaj|покажи|раскрой|выведи|скажи)|告诉|显示|输出|"
        r"透露|教えて|見せて|表示)[^.\n\u3002]{0,40}?(?:prompt (?:système|du système|de sistema|del sistema|"
        r"di sistema|do sistema)|system-?prompt|systeemprompt|prompt systemowy|"
        r"системн\w* (?:промпт|подсказк\w*|инструкци\w*)|系统提示|系統提示|システムプロンプト|verborgen regels|"
        r"règles cachées|versteckten regeln|reglas ocultas|regole nascoste)",
    ),
    (
        "role-play escape",
        f"{_ANSWER_WORDS}[^.\\n\u3002]{{0,60}}?{_WITHOUT_LIMITS}|{_WITHOUT_LIMITS}[^.\\n\u3002]{{0,60}}?{_ANSWER_WORDS}",
    ),
    (
        "encoded payload",
        r"\b(?:first|last|initial|capital)\s+letters?\s+of\s+(?:each|every)\s+(?:word|line|sentence)\b.{0,60}\b(?:follow|"
        r"execute|obey|do (?:what|as|it)|run|carry out|comply|perform)\b",
    ),
    (
        "encoded payload",
        r"\b(?:decode|decrypt|translate|convert|interpret)\b.{0,40}\b(?:base ?64|rot ?13|hex|binary|morse|"
        r"caesar|reversed|backwards)\b.{0,60}\b(?:follow|execute|obey|do (?:what|as)|run|carry out|comply|perform)\b",
    ),
    (
        "encoded payload",
        r"\b(?:follow|execute|obey|do (?:what|as)|run|carry out|comply with|perform)\b.{0,60}\b(?:base ?64|rot ?13|"
        r"hex(?:adecimal)?|encoded|decoded|reversed|backwards)\b.{0,20}\b(?:instructions?|text|string|message|"
        r"payload|command)",
    ),
]

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_SPACED = re.compile(r"\b(?:\w[ ._*-]){3,}\w\b")
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{16,}={0,2}(?![A-Za-z0-9+/=])")
_HEX = re.compile(r"\b(?:[0-9a-fA-F]{2}[ :]?){12,}\b")
# Words with digits standing for letters in them ("1gn0r3", "pr3v10u5"), at least three of them.
_LEETSPEAK = re.compile(r"(?:\b(?=\w*[a-z])(?=\w*[013457@$])[a-z0-9@$]{3,}\b.*?){3}", re.IGNORECASE | re.DOTALL)
_REVERSED_HINT = re.compile(r"\b(?:backwards?|reversed?|reverse order|right to left)\b", re.IGNORECASE)
_SENTENCES = re.compile(r"(?<=[.!?\n])\s+")


def normalise(text: str) -> str:
    """Undo the cheap obfuscations (full-width letters, zero-width joiners, s p a c e d letters)."""
    folded = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH)
    return _SPACED.sub(lambda match: re.sub(r"[ ._*-]", "", match.group(0)), folded)


def decoded_payloads(text: str) -> list[str]:
    """Readable text hidden in base64, hex or rot13 inside the message."""
    found: list[str] = []
    for match in _BASE64.finditer(text):
        chunk = match.group(0)
        try:
            raw = base64.b64decode(chunk + "=" * (-len(chunk) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        if _readable(raw):
            found.append(raw.decode("utf-8", "ignore"))
    for match in _HEX.finditer(text):
        try:
            raw = bytes.fromhex(re.sub(r"[ :]", "", match.group(0)))
        except ValueError:
            continue
        if _readable(raw):
            found.append(raw.decode("utf-8", "ignore"))
    if re.search(r"\brot ?13\b", text, re.IGNORECASE):
        found.append(codecs.decode(text, "rot13"))
    return found


def _readable(raw: bytes) -> bool:
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    letters = sum(char.isalpha() or char.isspace() for char in decoded)
    return len(decoded) >= 8 and letters / len(decoded) > 0.85 and " " in decoded


@dataclass(frozen=True, slots=True)
class Check:
    """One rail's finding: `reason` is None when the text passed."""

    reason: str | None = None
    score: float | None = None
    text: str | None = None  # the rewritten text, for rails that modify

    @property
    def flagged(self) -> bool:
        return self.reason is not None


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    patterns: tuple[re.Pattern[str], ...]
    examples: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ClassifierKnobs:
    """`jailbreak.classifier` in config.yml: a logistic regression over all-MiniLM-L6-v2 embeddings of a message's
    word windows, trained on the attack library (positives) and the benign training texts (negatives)."""

    threshold: float = 0.8
    attack_files: tuple[Path, ...] = ()
    benign_files: tuple[Path, ...] = ()
    window_words: int = 120
    window_stride: int = 100
    max_windows: int = 8
    regularisation: float = 10.0
    weights_file: Path | None = None

    def windows(self, text: str) -> list[str]:
        """The text in windows of `window_words` words (MiniLM reads ~256 tokens): at most `max_windows`, spread
        over the whole text, so an attack at the end of a long paste is read too. A short text is one window."""
        words = text.split()
        if len(words) <= self.window_words:
            return [text]
        starts = list(range(0, len(words) - self.window_words + self.window_stride, self.window_stride))
        if len(starts) > self.max_windows:
            last = len(starts) - 1
            starts = [starts[round(i * last / max(self.max_windows - 1, 1))] for i in range(self.max_windows)]
        return [" ".join(words[start : start + self.window_words]) for start in starts]


@dataclass(frozen=True, slots=True)
class ClassifierWeights:
    coef: np.ndarray
    intercept: float

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(vectors @ self.coef + self.intercept)))


@dataclass(slots=True)
class Policy:
    """Everything the rails decide by, read from `custom_data.ratchet` in config.yml."""

    jailbreak_threshold: float = 0.75
    known_attacks: tuple[str, ...] = ()
    extra_jailbreak_patterns: tuple[re.Pattern[str], ...] = ()
    topics: tuple[Topic, ...] = ()
    topic_threshold: float = 0.70
    input_pii_action: PiiAction = "redact"
    output_pii_action: PiiAction = "redact"
    blocked_output_terms: tuple[re.Pattern[str], ...] = ()
    system_prompt_leak_chars: int = 60
    stream_window_chars: int = 16
    stream_holdback_chars: int = 8
    classifier: ClassifierKnobs | None = None
    # Filled by `prepare`: the embeddings of known attacks and topic examples, computed once per config load.
    _attack_vectors: np.ndarray | None = field(default=None, repr=False)
    _topic_vectors: list[tuple[str, np.ndarray]] = field(default_factory=list, repr=False)
    _classifier: ClassifierWeights | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, custom_data: dict[str, Any], config_dir: Path) -> Policy:
        section = custom_data.get("ratchet")
        if not isinstance(section, dict):
            raise PolicyError("config.yml needs a `custom_data.ratchet` section (see guardrails/config.yml)")
        try:
            jailbreak = section.get("jailbreak", {})
            attacks_file = config_dir / jailbreak.get("known_attacks_file", "known_attacks.txt")
            lines = attacks_file.read_text().splitlines() if attacks_file.exists() else []
            known = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
            topics_section = section.get("topics", {})
            topics = tuple(
                Topic(
                    name=str(topic["name"]),
                    patterns=tuple(re.compile(pattern, re.IGNORECASE) for pattern in topic.get("patterns", [])),
                    examples=tuple(str(example) for example in topic.get("examples", [])),
                )
                for topic in topics_section.get("refuse", [])
            )
            classifier = _classifier_knobs(jailbreak.get("classifier"), config_dir)
            pii = section.get("personal_data", {})
            output = section.get("output", {})
            stream = section.get("streaming", {})
            policy = cls(
                jailbreak_threshold=float(jailbreak.get("similarity_threshold", cls.jailbreak_threshold)),
                known_attacks=tuple(known),
                extra_jailbreak_patterns=tuple(
                    re.compile(pattern, re.IGNORECASE) for pattern in jailbreak.get("extra_patterns", [])
                ),
                topics=topics,
                classifier=classifier,
                topic_threshold=float(topics_section.get("similarity_threshold", cls.topic_threshold)),
                input_pii_action=pii.get("input", "redact"),
                output_pii_action=pii.get("output", "redact"),
                blocked_output_terms=tuple(
                    re.compile(pattern, re.IGNORECASE) for pattern in output.get("blocked_patterns", [])
                ),
                system_prompt_leak_chars=int(output.get("system_prompt_leak_chars", cls.system_prompt_leak_chars)),
                stream_window_chars=int(stream.get("window_chars", cls.stream_window_chars)),
                stream_holdback_chars=int(stream.get("holdback_chars", cls.stream_holdback_chars)),
            )
        except (KeyError, TypeError, ValueError, AttributeError, re.error, OSError) as error:
            raise PolicyError(f"custom_data.ratchet: {type(error).__name__}: {error}") from error
        for name, value in (("input", policy.input_pii_action), ("output", policy.output_pii_action)):
            if value not in ("redact", "block"):
                raise PolicyError(f"custom_data.ratchet.personal_data.{name} must be redact or block, not {value!r}")
        for name, value in (("jailbreak", policy.jailbreak_threshold), ("topics", policy.topic_threshold)):
            if not 0 < value <= 1:
                raise PolicyError(f"custom_data.ratchet.{name} similarity_threshold must be in (0, 1], not {value}")
        if policy.classifier is not None:
            knobs = policy.classifier
            if not 0 < knobs.threshold < 1:
                raise PolicyError(
                    f"custom_data.ratchet.jailbreak.classifier.threshold must be in (0, 1), not {knobs.threshold}"
                )
            if not knobs.attack_files or not knobs.benign_files:
                raise PolicyError("custom_data.ratchet.jailbreak.classifier needs attack_files and benign_files")
            if knobs.window_words < 8 or not 0 < knobs.window_stride <= knobs.window_words or knobs.max_windows < 1:
                raise PolicyError(
                    "custom_data.ratchet.jailbreak.classifier: window_words ≥ 8, 0 < window_stride ≤ "
                    "window_words, max_windows ≥ 1"
                )
        if policy.stream_window_chars < 1 or policy.stream_holdback_chars < 0:
            raise PolicyError("custom_data.ratchet.streaming: window_chars ≥ 1 and holdback_chars ≥ 0")
        return policy

    def prepare(self, embedder: Embedder | None) -> None:
        """Embed the known attacks and topic examples once, so a check embeds only the user's text."""
        if embedder is None:
            return
        if self.known_attacks:
            self._attack_vectors = embedder.encode(list(self.known_attacks))
        self._topic_vectors = [
            (topic.name, embedder.encode(list(topic.examples))) for topic in self.topics if topic.examples
        ]
        if self.classifier is not None:
            self._classifier = load_or_fit_classifier(self.classifier, self.known_attacks, embedder)


def _classifier_knobs(section: dict[str, Any] | None, config_dir: Path) -> ClassifierKnobs | None:
    if section is None or not section.get("enabled", True):
        return None
    weights = section.get("weights_file")
    return ClassifierKnobs(
        threshold=float(section.get("threshold", ClassifierKnobs.threshold)),
        attack_files=tuple(config_dir / name for name in section.get("attack_files", [])),
        benign_files=tuple(config_dir / name for name in section.get("benign_files", [])),
        window_words=int(section.get("window_words", ClassifierKnobs.window_words)),
        window_stride=int(section.get("window_stride", ClassifierKnobs.window_stride)),
        max_windows=int(section.get("max_windows", ClassifierKnobs.max_windows)),
        regularisation=float(section.get("regularisation", ClassifierKnobs.regularisation)),
        weights_file=config_dir / weights if weights else None,
    )


def _library_texts(path: Path) -> list[str]:
    """A JSONL file of {"text": …} rows (the attack library, the benign training set)."""
    try:
        rows = [json.loads(line) for line in path.read_text().split("\n") if line.strip()]
        return [str(row["text"]) for row in rows]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PolicyError(
            f"custom_data.ratchet.jailbreak.classifier: {path.name}: {type(error).__name__}: {error}"
        ) from error


def load_or_fit_classifier(
    knobs: ClassifierKnobs, known_attacks: tuple[str, ...], embedder: Embedder
) -> ClassifierWeights:
    """The classifier's weights: read from `weights_file` when it was fitted on exactly these texts and knobs
    (milliseconds), else fitted now (embedding every training window: minutes on a busy 2-core box) and written
    there, so only the first load after the library changes pays."""
    positives = [*known_attacks, *(text for path in knobs.attack_files for text in _library_texts(path))]
    negatives = [text for path in knobs.benign_files for text in _library_texts(path)]
    digest = hashlib.sha256(
        json.dumps(
            [MODEL_NAME, knobs.window_words, knobs.window_stride, knobs.max_windows, knobs.regularisation]
        ).encode()
    )
    for label, texts in (("+", positives), ("-", negatives)):
        for text in texts:
            digest.update(f"{label}{text}\0".encode())
    data_hash = digest.hexdigest()
    if knobs.weights_file is not None and knobs.weights_file.is_file():
        try:
            saved = json.loads(knobs.weights_file.read_text())
            if saved.get("data_hash") == data_hash:
                return ClassifierWeights(np.asarray(saved["coef"], dtype=np.float32), float(saved["intercept"]))
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("unreadable %s: fitting the jailbreak classifier again", knobs.weights_file)
    weights = _fit_classifier(knobs, positives, negatives, embedder)
    if knobs.weights_file is not None:
        saved = {
            "data_hash": data_hash,
            "model": MODEL_NAME,
            "positives": len(positives),
            "negatives": len(negatives),
            "intercept": round(weights.intercept, 6),
            "coef": [round(float(value), 6) for value in weights.coef],
        }
        try:
            knobs.weights_file.write_text(json.dumps(saved) + "\n")
        except OSError as error:  # a read-only config folder still works, it just fits again at the next load
            log.warning("cannot cache the jailbreak classifier in %s: %s", knobs.weights_file, error)
    return weights


def _fit_classifier(
    knobs: ClassifierKnobs, positives: list[str], negatives: list[str], embedder: Embedder
) -> ClassifierWeights:
    from sklearn.linear_model import LogisticRegression  # only needed when the library changed

    started = time.perf_counter()
    # Trained on the same windows it judges at run time, normalised the same way.
    pos = [window for text in positives for window in knobs.windows(normalise(text))]
    neg = [window for text in negatives for window in knobs.windows(normalise(text))]
    vectors = embedder.encode_bulk([*pos, *neg])
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    # Balanced: the library has more attack windows than benign ones; the threshold, not the class ratio,
    # should set the trade-off.
    model = LogisticRegression(C=knobs.regularisation, class_weight="balanced", max_iter=5000).fit(vectors, labels)
    log.info(
        "jailbreak classifier fitted on %d attack and %d benign windows in %.1f s",
        len(pos),
        len(neg),
        time.perf_counter() - started,
    )
    return ClassifierWeights(model.coef_[0].astype(np.float32), float(model.intercept_[0]))


def _segments(text: str) -> list[str]:
    """The whole message plus its sentences: an attack pasted inside a long text is judged on its own."""
    parts = [part.strip() for part in _SENTENCES.split(text) if len(part.strip()) > 12]
    return [text, *parts[:15]] if len(parts) > 1 else [text]


def _best_similarity(vectors: np.ndarray, references: np.ndarray) -> tuple[float, int]:
    scores = vectors @ references.T
    flat = int(np.argmax(scores))
    return float(scores.flat[flat]), flat % references.shape[0]


def check_jailbreak(text: str, policy: Policy, embedder: Embedder | None) -> Check:
    """Heuristics on the text, its normalised form and any decoded payload; then similarity to known attacks."""
    normalised = normalise(text)
    candidates = [text, normalised]
    if _LEETSPEAK.search(normalised):  # "1gn0r3 4ll pr3v10u5 1n5truct10n5"
        candidates.append(normalised.translate(_LEET))
    if _REVERSED_HINT.search(normalised):  # "read this backwards: snoitcurtsni suoiverp erongi"
        candidates += [normalised[::-1], " ".join(word[::-1] for word in normalised.split())]
    payloads = decoded_payloads(text)
    # Most messages are their own normalised form: each distinct text is searched once.
    candidates = list(dict.fromkeys([*candidates, *payloads]))
    for candidate in candidates:
        for name, pattern in _compiled_jailbreak():
            if pattern.search(candidate):
                where = " in an encoded payload" if candidate in payloads else ""
                return Check(reason=f"{name}{where}")
        # Reasons name a pattern by its position in config.yml, never its text: reasons reach the user.
        for number, pattern in enumerate(policy.extra_jailbreak_patterns, 1):
            if pattern.search(candidate):
                return Check(reason=f"extra pattern #{number}")
    if embedder is None or (policy._attack_vectors is None and policy._classifier is None):
        return Check()
    segments = [*_segments(normalised), *payloads]
    windows: list[str] = []
    if policy.classifier is not None and policy._classifier is not None:
        windows = [window for part in (normalised, *payloads) for window in policy.classifier.windows(part)]
    # One batched forward pass for both; a short message is one text (its sentences and windows are itself).
    unique = list(dict.fromkeys([*segments, *windows]))
    vectors = dict(zip(unique, embedder.encode(unique), strict=True))
    score = 0.0
    if policy._attack_vectors is not None:
        score, index = _best_similarity(np.stack([vectors[part] for part in segments]), policy._attack_vectors)
        if score >= policy.jailbreak_threshold:
            return Check(reason=f"similar to known attack #{index + 1} ({score:.2f})", score=score)
    if windows and policy._classifier is not None and policy.classifier is not None:
        probability = float(policy._classifier.probabilities(np.stack([vectors[part] for part in windows])).max())
        if probability >= policy.classifier.threshold:
            return Check(reason=f"jailbreak classifier ({probability:.2f})", score=probability)
    return Check(score=score)


def check_topics(text: str, policy: Policy, embedder: Embedder | None) -> Check:
    normalised = normalise(text)
    for topic in policy.topics:
        for pattern in topic.patterns:
            if pattern.search(normalised):
                return Check(reason=f"topic {topic.name}")
    if embedder is None or not policy._topic_vectors:
        return Check()
    vectors = embedder.encode(_segments(normalised))
    best_score = 0.0
    for name, references in policy._topic_vectors:
        score, _ = _best_similarity(vectors, references)
        if score >= policy.topic_threshold:
            return Check(reason=f"topic {name} ({score:.2f})", score=score)
        best_score = max(best_score, score)
    return Check(score=best_score)


def check_personal_data(text: str) -> Check:
    """Flags personal data and secrets; `text` is the redacted version."""
    redaction = redact(text)
    if not redaction.changed:
        return Check()
    return Check(reason="personal data: " + ", ".join(redaction.kinds), text=redaction.text)


_PEM_HEADER = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
_SPECIAL_TOKENS = re.compile(r"<\|im_(?:start|end)\|>|<\|endoftext\|>")


def check_output_policy(answer: str, policy: Policy, system_prompt: str | None) -> Check:
    """Blocks answers that carry a private key (even half-streamed), configured terms, or the system prompt."""
    if _PEM_HEADER.search(answer):
        return Check(reason="private key in the answer")
    if _SPECIAL_TOKENS.search(answer):
        return Check(reason="chat-template control tokens in the answer")
    for number, pattern in enumerate(policy.blocked_output_terms, 1):
        if pattern.search(answer):
            return Check(reason=f"blocked pattern #{number}")
    if system_prompt and _shares_long_substring(answer, system_prompt, policy.system_prompt_leak_chars):
        return Check(reason="the answer repeats the system prompt")
    return Check()


def _shares_long_substring(answer: str, secret: str, length: int) -> bool:
    """Whether any `length`-character window of the (whitespace-normalised) secret appears in the answer."""
    squashed_answer = " ".join(answer.split()).lower()
    squashed_secret = " ".join(secret.split()).lower()
    if len(squashed_secret) < length:
        return False
    step = max(1, length // 4)
    return any(
        squashed_secret[start : start + length] in squashed_answer
        for start in range(0, len(squashed_secret) - length + 1, step)
    )


@cache
def _compiled_jailbreak() -> list[tuple[str, re.Pattern[str]]]:
    return [(name, re.compile(pattern, re.IGNORECASE | re.MULTILINE)) for name, pattern in JAILBREAK_PATTERNS]
