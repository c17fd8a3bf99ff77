from __future__ import annotations

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from mes.models import Area, Line, Site, Station

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
