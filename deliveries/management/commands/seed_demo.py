from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from deliveries.demo import load_demo_data


class Command(BaseCommand):
    help = "Load the demo centers, shops, riders and accounts (password 'demo'). Idempotent."

    def add_arguments(self, parser):
        parser.add_argument(
            "--force",
            action="store_true",
            help="Create demo accounts even with DEBUG off.",
        )

    def handle(self, *args, force=False, **options):
        if not settings.DEBUG and not force:
            raise CommandError("DEBUG is off: demo accounts with a known password would be created. Use --force.")
        counts = load_demo_data()
        self.stdout.write(self.style.SUCCESS("Demo data ready: " + ", ".join(f"{v} {k}" for k, v in counts.items())))
