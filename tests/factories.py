from __future__ import annotations

from decimal import Decimal

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from mes.models import (
    Area,
    DefectCode,
    DowntimeReason,
    Line,
    Product,
    Route,
    RouteOperation,
    Site,
    Station,
    StationType,
    Unit,
    WorkOrder,
)

PASSWORD = "correct horse battery staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password(PASSWORD)

    @factory.post_generation
    def role(self, create, extracted, **kwargs):
        if create and extracted:
            self.groups.add(Group.objects.get(name=extracted))


class SiteFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Site

    code = factory.Sequence(lambda n: f"S{n}")
    name = factory.Sequence(lambda n: f"Site {n}")
    timezone = "Europe/Berlin"


class AreaFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Area

    site = factory.SubFactory(SiteFactory)
    code = factory.Sequence(lambda n: f"A{n}")
    name = factory.Sequence(lambda n: f"Area {n}")


class LineFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Line

    area = factory.SubFactory(AreaFactory)
    code = factory.Sequence(lambda n: f"L{n}")
    name = factory.Sequence(lambda n: f"Line {n}")


class StationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Station

    line = factory.SubFactory(LineFactory)
    code = factory.Sequence(lambda n: f"ST{n}")
    name = factory.Sequence(lambda n: f"Station {n}")
    position = factory.Sequence(lambda n: n + 1)
    station_type = StationType.TIGHTENING


class ProductFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Product

    code = factory.Sequence(lambda n: f"P{n}")
    name = factory.Sequence(lambda n: f"Product {n}")


class RouteFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Route

    product = factory.SubFactory(ProductFactory)
    line = factory.SubFactory(LineFactory)
    ideal_cycle_time_s = Decimal("60")


class RouteOperationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = RouteOperation

    route = factory.SubFactory(RouteFactory)
    sequence = factory.Sequence(lambda n: n + 1)
    station = factory.SubFactory(StationFactory, line=factory.SelfAttribute("..route.line"))
    name = "Operation"
    ideal_cycle_time_s = Decimal("55")


class WorkOrderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = WorkOrder

    external_id = factory.Sequence(lambda n: f"WO-{n:05d}")
    product = factory.SubFactory(ProductFactory)
    line = factory.SubFactory(LineFactory)
    quantity = 10


class UnitFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Unit

    serial = factory.Sequence(lambda n: f"SN{n:06d}")
    work_order = factory.SubFactory(WorkOrderFactory)


class DefectCodeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DefectCode
        django_get_or_create = ["code"]

    code = "steering"
    name = "Steering pull"


class DowntimeReasonFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DowntimeReason
        django_get_or_create = ["code"]

    code = "MECH.CONVEYOR"
    name = "Conveyor jam"
