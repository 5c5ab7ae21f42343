from billing_cli.main import app

app(prog_name="billing")
