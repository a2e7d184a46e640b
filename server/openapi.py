"""The OpenAPI document's schemas for msgspec structs, made to say everything the API validates.

Litestar's own struct plugin leaves out constraints that msgspec enforces, so the document allowed what the API
refused (schemathesis flagged it): `forbid_unknown_fields` (an unknown field answers 400), bounds equal to zero
(`Meta(ge=0)`: Litestar skips falsy values) and constraints on one arm of a union (`str | Annotated[list[str],
Meta(max_length=8)]`). Litestar offers no public hook for these, hence the subclass of its plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar._openapi.schema_generation.plugins import StructSchemaPlugin
from litestar.openapi.spec import Schema
from litestar.openapi.spec.enums import OpenAPIType

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.typing import FieldDefinition

_Constrained = msgspec.inspect.IntType | msgspec.inspect.FloatType | msgspec.inspect.StrType | msgspec.inspect.ListType

# msgspec constraint -> OpenAPI schema attribute, per kind of type.
_NUMBER = {"ge": "minimum", "gt": "exclusive_minimum", "le": "maximum", "lt": "exclusive_maximum"}
_CONSTRAINTS: dict[type, tuple[set[OpenAPIType], dict[str, str]]] = {
    msgspec.inspect.IntType: ({OpenAPIType.INTEGER}, _NUMBER),
    msgspec.inspect.FloatType: ({OpenAPIType.NUMBER, OpenAPIType.INTEGER}, _NUMBER),
    msgspec.inspect.StrType: (
        {OpenAPIType.STRING},
        {"min_length": "min_length", "max_length": "max_length", "pattern": "pattern"},
    ),
    msgspec.inspect.ListType: ({OpenAPIType.ARRAY}, {"min_length": "min_items", "max_length": "max_items"}),
}


def _constrained_arms(field_type: msgspec.inspect.Type) -> list[_Constrained]:
    members = field_type.types if isinstance(field_type, msgspec.inspect.UnionType) else (field_type,)
    arms = [member.type if isinstance(member, msgspec.inspect.Metadata) else member for member in members]
    return [arm for arm in arms if isinstance(arm, _Constrained)]


def _apply(arm: _Constrained, schema: Schema) -> None:
    for constraint, key in _CONSTRAINTS[type(arm)][1].items():
        value: Any = getattr(arm, constraint)
        if value is not None and getattr(schema, key) is None:
            setattr(schema, key, value)


def _complete(field_type: msgspec.inspect.Type, prop: Schema) -> None:
    arms = _constrained_arms(field_type)
    if not isinstance(field_type, msgspec.inspect.UnionType) or not prop.one_of:
        for arm in arms:
            _apply(arm, prop)
        return
    for arm in arms:
        kinds = _CONSTRAINTS[type(arm)][0]
        for option in prop.one_of:
            if isinstance(option, Schema) and option.type in kinds:
                _apply(arm, option)


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """Registered as an app plugin, it comes before Litestar's built-in one for every struct."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        assert isinstance(info, msgspec.inspect.StructType)
        if info.forbid_unknown_fields:
            schema.additional_properties = False
        for field in info.fields:
            prop = (schema.properties or {}).get(field.encode_name)
            if isinstance(prop, Schema):
                _complete(field.type, prop)
        return schema
