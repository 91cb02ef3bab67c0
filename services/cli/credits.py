"""`packline credits`: grant credits, read a balance (both through the credits service), and
a user's statement (from the notifier, services/cli/reads.py)."""

from __future__ import annotations

import typer

from services.cli import reads
from services.cli.common import credits_command
from shared.events import BalanceQuery, CreditsBalance, CreditsGrant

app = typer.Typer(no_args_is_help=True, help="credit balances")
app.command("statement")(reads.statement)


@app.command("grant")
def credits_grant(user: str, amount: int) -> None:
    _show_balance(user, credits_command(CreditsGrant(user_id=user, amount=amount), user))


@app.command("balance")
def credits_balance(user: str) -> None:
    _show_balance(user, credits_command(BalanceQuery(user_id=user), user))


def _show_balance(user: str, reply: CreditsBalance) -> None:
    typer.echo(f"{user} balance: {reply.balance}")
