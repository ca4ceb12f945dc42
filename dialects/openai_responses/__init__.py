"""The OpenAI Responses dialect: /v1/responses and its stored-response routes."""
