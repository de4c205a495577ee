"""The worker: marks every open task done, twice a second, until stopped."""

import datetime
import signal
import sys
import time

from sqlalchemy.exc import SQLAlchemyError

from . import create_app, db
from .models import Task

stopping = False


def stop(signum, frame):
    global stopping
    stopping = True


def work_once() -> int:
    open_tasks = db.session.execute(db.select(Task).where(Task.done.is_(False))).scalars().all()
    for task in open_tasks:
        finish(task)
    db.session.commit()
    return len(open_tasks)


def finish(task: Task) -> None:
    task.done = True
    task.done_at = datetime.datetime.utcnow()


def main() -> None:
    signal.signal(signal.SIGTERM, stop)
    app = create_app()
    with app.app_context():
        print("worker started", flush=True)
        while not stopping:
            try:
                work_once()
            except SQLAlchemyError as error:  # the database restarts, or the schema moves under us
                db.session.rollback()
                print(f"worker: {error.__class__.__name__}: {error}".splitlines()[0], file=sys.stderr, flush=True)
            finally:
                db.session.remove()  # never sit idle inside a transaction: migrations need the lock
            time.sleep(0.5)


if __name__ == "__main__":
    main()
