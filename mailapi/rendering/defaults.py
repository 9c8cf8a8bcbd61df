"""The templates a fresh installation starts with; admins replace them in the panel."""

DEFAULT_TEMPLATES: dict[str, str] = {
    "email_verification_subject": "{{ subject }}",
    "email_verification_text": """\
Hello,

please confirm your e-mail address {{ to }}.
{% if link is defined %}
Open this link to confirm:
{{ link }}
{% endif %}{% if token is defined %}
Your verification code: {{ token }}
{% endif %}{% if expires_at is defined %}
This request expires at {{ expires_at }}.
{% endif %}
If you did not ask for this, you can ignore this message.
""",
    "email_verification_html": """\
<!doctype html>
<html><body style="font-family: sans-serif">
<p>Hello,</p>
<p>please confirm your e-mail address {{ to }}.</p>
{% if link is defined %}<p><a href="{{ link }}">Confirm my address</a></p>{% endif %}
{% if token is defined %}<p>Your verification code: <strong>{{ token }}</strong></p>{% endif %}
{% if expires_at is defined %}<p>This request expires at {{ expires_at }}.</p>{% endif %}
<p>If you did not ask for this, you can ignore this message.</p>
</body></html>
""",
    "password_reset_subject": "{{ subject }}",
    "password_reset_text": """\
Hello,

someone asked to reset the password for {{ to }}.
{% if link is defined %}
Open this link to choose a new password:
{{ link }}
{% endif %}{% if token is defined %}
Your reset code: {{ token }}
{% endif %}{% if expires_at is defined %}
This request expires at {{ expires_at }}.
{% endif %}
If you did not ask for this, you can ignore this message; your password is unchanged.
""",
    "password_reset_html": """\
<!doctype html>
<html><body style="font-family: sans-serif">
<p>Hello,</p>
<p>someone asked to reset the password for {{ to }}.</p>
{% if link is defined %}<p><a href="{{ link }}">Choose a new password</a></p>{% endif %}
{% if token is defined %}<p>Your reset code: <strong>{{ token }}</strong></p>{% endif %}
{% if expires_at is defined %}<p>This request expires at {{ expires_at }}.</p>{% endif %}
<p>If you did not ask for this, you can ignore this message; your password is unchanged.</p>
</body></html>
""",
}
