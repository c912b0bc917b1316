"""Cognito pre-sign-up check of Tally's voter pool (voter_registration = "self").

A voter's id is their phone number, so the pool must not hold two accounts
for one number. Cognito runs this before it creates an account (self sign-up,
and AdminCreateUser in this mode) and refuses the sign-up when this raises:

- the phone number must be in E.164 form: "+", a country code that does not
  start with 0, at most 15 digits, nothing else. A number written with
  spaces, dashes, dots, brackets or a leading "00" is refused with its E.164
  form in the message, so the client can send that instead (a pre-sign-up
  trigger cannot change the attribute itself);
- no account of the pool may already hold the number, confirmed or not (an
  unconfirmed one is finished with a new code, not replaced).

Cognito then sends the confirmation code to the number, which proves the
voter holds it.
"""

import re

import boto3

E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
SEPARATORS = re.compile(r"[\s().\-]")

_cognito = None


def cognito():
    global _cognito
    if _cognito is None:
        _cognito = boto3.client("cognito-idp")
    return _cognito


def normalise(raw):
    """The E.164 form of `raw`, or None when it has none."""
    compact = SEPARATORS.sub("", raw or "")
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    return compact if E164.match(compact) else None


def holders(pool_id, phone):
    """Accounts of the pool whose phone_number is `phone` (at most one)."""
    # `phone` matched E164 above: digits and a leading "+", nothing to escape.
    answer = cognito().list_users(
        UserPoolId=pool_id,
        Filter='phone_number = "%s"' % phone,
        AttributesToGet=["phone_number"],
        Limit=1,
    )
    return answer.get("Users", [])


def handler(event, context):
    attributes = event.get("request", {}).get("userAttributes") or {}
    given = attributes.get("phone_number", "")
    phone = normalise(given)
    if phone is None:
        raise ValueError("a phone number in E.164 form (for example +447700900123) is required")
    if phone != given:
        raise ValueError("send the phone number in E.164 form: %s" % phone)
    if holders(event["userPoolId"], phone):
        raise ValueError("this phone number already has an account")
    return event
