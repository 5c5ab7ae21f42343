"""The Checkout Session parameters and how Stripe failures are named."""

from __future__ import annotations

import stripe
from checkout.catalog import find_package
from checkout.repository import NewPurchase
from checkout.stripe_checkout import failure_code, is_unavailable, session_params


def test_session_names_its_purchase_and_charges_the_catalog_price() -> None:
    package = find_package("professional")
    assert package is not None
    purchase = NewPurchase("p-1", "alice", package, "/chat")

    params = session_params(purchase, "https://app/ok", "https://app/cancel")

    assert params["mode"] == "payment"
    assert params["client_reference_id"] == "p-1"
    assert params["line_items"] == [
        {
            "price_data": {
                "currency": "usd",
                "unit_amount": 4999,
                "product_data": {"name": "Professional credits"},
            },
            "quantity": 1,
        }
    ]
    assert params["metadata"] == {
        "purchase_id": "p-1",
        "user_id": "alice",
        "package_code": "professional",
    }
    assert params["payment_intent_data"] == {"metadata": {"purchase_id": "p-1", "user_id": "alice"}}
    assert (params["success_url"], params["cancel_url"]) == ("https://app/ok", "https://app/cancel")


def test_connection_errors_are_unavailability() -> None:
    error = stripe.APIConnectionError("timed out")  # type: ignore[no-untyped-call]
    assert is_unavailable(error)
    assert failure_code(error) == "stripe:api_connection_error"


def test_other_errors_keep_stripes_code() -> None:
    error = stripe.InvalidRequestError(  # type: ignore[no-untyped-call]
        "bad", param="x", code="parameter_invalid_integer"
    )
    assert not is_unavailable(error)
    assert failure_code(error) == "stripe:parameter_invalid_integer"
